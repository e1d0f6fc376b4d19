//! Generated protobuf and gRPC code (package `depin.analytics.v1`) and the descriptor set
//! used for server reflection and JSON rendering.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("depin.analytics.v1");
}

/// The encoded `FileDescriptorSet` of every proto file, well-known imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/depin_descriptor.bin"));
