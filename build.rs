//! The default mappings, their examples and the Klaviyo schemas are compiled into the binary;
//! rebuild when any of them changes (include_dir does not notice added files by itself).

fn main() {
    for dir in ["mappings", "examples", "schemas/klaviyo"] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
