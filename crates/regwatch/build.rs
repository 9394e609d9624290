//! Generates the ABI of /dev/regwatch from the module's uapi header, the one
//! source of truth, so a Rust side that disagrees with it cannot compile.
//!
//! Two outputs in `OUT_DIR`:
//! - `uapi.rs`: the header's structs, enum values and plain constants.
//! - `uapi_values.rs`: values of the header's function-like macros
//!   (`REGWATCH_IOC_*`, `REGWATCH_STATUS_SIZE`) as clang evaluates them; bindgen
//!   cannot expand such macros, but it does evaluate initialisers of `const`
//!   variables. The unit tests compare the Rust encoding against these.

use std::env;
use std::path::{Path, PathBuf};

const HEADER: &str = "../../kmod/include/uapi/linux/regwatch.h";

/// Page sizes and slot counts for which the tests compare `REGWATCH_STATUS_SIZE`.
const STATUS_SIZE_CASES: [(u64, u64); 5] = [
    (1, 4096),
    (496, 4096),
    (497, 4096),
    (65536, 4096),
    (1000, 65536),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let header = manifest_dir.join(HEADER);
    let include_dir = header
        .parent()
        .and_then(Path::parent)
        .expect("header path has two parents")
        .to_path_buf();
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-changed=build.rs");

    generate(
        &include_dir,
        "#include <linux/regwatch.h>\n",
        "(regwatch|REGWATCH)_.*",
        &out_dir.join("uapi.rs"),
    );

    let mut values = String::from("#include <linux/regwatch.h>\n");
    for name in ["API", "SET_CAPACITY", "WATCH", "UNWATCH"] {
        values.push_str(&format!(
            "const unsigned int regwatch_value_ioc_{} = REGWATCH_IOC_{name};\n",
            name.to_lowercase()
        ));
    }
    for (nslots, page) in STATUS_SIZE_CASES {
        values.push_str(&format!(
            "const unsigned long long regwatch_value_status_size_{nslots}_{page} = \
             REGWATCH_STATUS_SIZE({nslots}, {page});\n"
        ));
    }
    generate(
        &include_dir,
        &values,
        "regwatch_value_.*",
        &out_dir.join("uapi_values.rs"),
    );
}

/// Runs bindgen over `source` (C text that includes the header from
/// `include_dir`), keeping only items whose names match `allow`.
fn generate(include_dir: &Path, source: &str, allow: &str, out: &Path) {
    bindgen::Builder::default()
        .header_contents("regwatch_wrapper.h", source)
        // The kernel header's own include dir first, then the system's
        // <linux/types.h> and <linux/ioctl.h>.
        .clang_arg(format!("-I{}", include_dir.display()))
        .allowlist_item(allow)
        .derive_default(true)
        .derive_debug(true)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen over {}: {e}", include_dir.display()))
        .write_to_file(out)
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
