// The test binaries link the worker, hence libtorch: give them the same rpath.
include!("../worker/build_rpath.rs");

fn main() {
    link_libtorch_with_rpath();
}
