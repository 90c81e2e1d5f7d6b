//! Generates the gRPC code from `proto/` with a vendored `protoc`, so that a
//! clean machine needs no protobuf compiler of its own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/pgquorum.proto",
        "proto/raft.proto",
        "proto/agent.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pgquorum_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
