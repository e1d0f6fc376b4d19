//! Generated protobuf and gRPC code (package `depin.analytics.v1`) and the descriptor set
//! used for server reflection and JSON rendering.

#![allow(clippy::all, missing_docs)]

/// Modules nest as the proto packages do, so generated cross-package paths resolve.
pub mod depin {
    pub mod analytics {
        pub mod v1 {
            tonic::include_proto!("depin.analytics.v1");
        }
        pub mod internal {
            pub mod v1 {
                tonic::include_proto!("depin.analytics.internal.v1");
            }
        }
    }
}

pub use depin::analytics::v1;

/// The node-to-node service (`depin.analytics.internal.v1`): not served by reflection.
pub use depin::analytics::internal::v1 as internal;

/// The encoded `FileDescriptorSet` of every proto file, well-known imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/depin_descriptor.bin"));
