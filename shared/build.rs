//! Generates the `qm.v1` protocol code from `../proto` at build time.
//!
//! The `.proto` sources are parsed by `protox` (pure Rust, so no system `protoc` is needed),
//! the resulting `FileDescriptorSet` is handed to `tonic-prost-build` for messages, clients
//! and servers, and the encoded descriptor set is written to
//! `$OUT_DIR/qm_v1_descriptor.bin` for gRPC reflection.

use std::error::Error;
use std::path::{Path, PathBuf};

use protox::prost::Message as _;

/// File name of the encoded descriptor set in `OUT_DIR` (see `src/pb.rs`).
const DESCRIPTOR_FILE: &str = "qm_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("..").join("proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Rebuild when anything under proto/ changes (added or removed files included: cargo
    // watches the directories' mtimes as well as the files).
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    if files.is_empty() {
        return Err(format!("no .proto files found under {}", proto_root.display()).into());
    }

    let fds = protox::compile(&files, [&proto_root])?;
    std::fs::write(out_dir.join(DESCRIPTOR_FILE), fds.encode_to_vec())?;

    // `build_transport(false)`: no generated `XClient::connect(dst)` constructors. The
    // `WorkerGateway.Connect` RPC generates a client method named `connect`, which would
    // collide with that constructor. Build clients with `XClient::new(channel)` from a
    // `tonic::transport::Channel` / `Endpoint` instead (the client library does anyway, to
    // set timeouts and follow the leader).
    tonic_prost_build::configure().build_client(true).build_server(true).build_transport(false).compile_fds(fds)?;

    Ok(())
}

/// Collects every `.proto` file below `dir`, recursively, directories included in the
/// rerun set so that new files trigger a rebuild.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
