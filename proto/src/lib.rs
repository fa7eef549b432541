//! The Strongbox gRPC contract: generated message types, clients and servers.
//!
//! The `.proto` files next to this crate are the source of truth; this crate only
//! compiles them. Every service and client depends on it, so there is one copy of
//! the generated code in the workspace.

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("auth.v1");
    }
}

pub mod storage {
    pub mod v1 {
        tonic::include_proto!("storage.v1");
    }
}

/// The encoded `FileDescriptorSet` of every proto here, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strongbox_descriptor");
