// Binaries and tests that link tch get no rpath, and `--as-needed` drops libtorch_cuda.so
// (then a GPU machine sees no CUDA). Point the rpath at the libtorch that torch-sys linked
// and keep libtorch (with its CUDA part) needed. See DESIGN.md, "Toolchain facts".
include!("build_rpath.rs");

fn main() {
    link_libtorch_with_rpath();
}
