//! The shared library's soname: programs linked against `libregcache.so` load
//! `libregcache.so.MAJOR`, which `cargo xtask install` links to the versioned file.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".to_owned());
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libregcache.so.{major}");
    println!("cargo:rerun-if-changed=build.rs");
}
