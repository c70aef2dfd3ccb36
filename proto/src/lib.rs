//! Sovra's gRPC contracts: generated messages, clients and servers, and the
//! descriptor set that server reflection serves.
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)]

/// The encoded `FileDescriptorSet` of every Sovra proto and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sovra_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("sovra.common.v1");
    }
}

pub mod identity {
    pub mod v1 {
        tonic::include_proto!("sovra.identity.v1");
    }
}

pub mod relationships {
    pub mod v1 {
        tonic::include_proto!("sovra.relationships.v1");
    }
}

pub mod commerce {
    pub mod v1 {
        tonic::include_proto!("sovra.commerce.v1");
    }
}
