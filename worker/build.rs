// Binaries and tests that link tch get no rpath, and `--as-needed` drops libtorch_cuda.so
// (then a GPU machine sees no CUDA). Point the rpath at the libtorch that torch-sys linked
// and keep libtorch (with its CUDA part) needed. See docs/design.md §5.
// The worker also compiles one small C++ file against libtorch's headers: bf16 autocast,
// which tch does not expose (`src/train/precision.rs`).
include!("build_rpath.rs");

fn main() {
    link_libtorch_with_rpath();
    compile_autocast();
}

fn compile_autocast() {
    println!("cargo:rerun-if-changed=cpp/autocast.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // Headers and ABI as torch-sys finds them: LIBTORCH_INCLUDE, else beside the lib
    // directory; LIBTORCH_CXX11_ABI, else the new ABI of every PyTorch since 2.7.
    let include = match std::env::var("LIBTORCH_INCLUDE") {
        Ok(root) => std::path::Path::new(&root).join("include"),
        Err(_) => {
            let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys passes DEP_TCH_LIBTORCH_LIB");
            std::path::Path::new(&lib).parent().expect("libtorch's lib has a parent").join("include")
        }
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .file("cpp/autocast.cpp")
        .compile("feral_autocast");
}
