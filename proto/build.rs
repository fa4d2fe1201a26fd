fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=feral/v1/feral.proto");
    tonic_prost_build::configure().compile_protos(&["feral/v1/feral.proto"], &["."])?;
    Ok(())
}
