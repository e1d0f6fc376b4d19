//! Compiles proto/ with protox (pure Rust), so building needs no system protoc, and keeps
//! the encoded descriptor set for gRPC server reflection and the CLI's JSON output.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "depin/analytics/v1/common.proto",
    "depin/analytics/v1/ingest.proto",
    "depin/analytics/v1/reputation.proto",
    "depin/analytics/v1/cluster.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("depin_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
