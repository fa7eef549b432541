//! Generates the Rust types and tonic stubs for every `.proto` in this crate.
//!
//! protoc comes from `protoc-bin-vendored` so a fresh machine needs no system package.

use std::path::PathBuf;

const PROTOS: &[&str] = &["auth/v1/auth.proto", "storage/v1/storage.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // `bytes` fields become `bytes::Bytes`, so upload chunks move instead of being copied.
        .bytes(".")
        .file_descriptor_set_path(out_dir.join("strongbox_descriptor.bin"))
        .compile_protos(PROTOS, &["."])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
