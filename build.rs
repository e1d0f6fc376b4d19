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
    // Code for the public services and the node-to-node one; the internal service is kept
    // out of the reflection descriptor set above (it is not a public API).
    let all = protox::compile(
        PROTOS
            .iter()
            .copied()
            .chain(["depin/analytics/internal/v1/node.proto"]),
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(all)?;
    Ok(())
}
