//! Compiles the C shim over UCX's registration cache (`ucx_shim.c`) against the system's
//! libucs, found through pkg-config (Debian: `libucx-dev`), and callgrind's client requests
//! (`callgrind_shim.c`, no-ops without valgrind's headers).

fn main() {
    println!("cargo:rerun-if-changed=ucx_shim.c");
    println!("cargo:rerun-if-changed=callgrind_shim.c");
    let ucs = pkg_config::Config::new()
        .atleast_version("1.10")
        .probe("ucx-ucs")
        .unwrap_or_else(|err| {
            panic!("libucs not found through pkg-config (install libucx-dev and pkg-config): {err}")
        });
    let mut build = cc::Build::new();
    build
        .file("ucx_shim.c")
        .file("callgrind_shim.c")
        .warnings(true)
        .extra_warnings(true);
    for dir in &ucs.include_paths {
        build.include(dir);
    }
    build.compile("ucx_shim");
}
