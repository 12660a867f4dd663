//! Tandem's control-plane API: the generated gRPC/protobuf code for
//! `tandem.control.v1`, and the watch client every director and node uses.
#![forbid(unsafe_code)]

pub mod pb {
    //! Generated from `proto/tandem/control/v1/*.proto`.
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tandem.control.v1");

    /// Encoded file descriptor set of the API, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tandem_descriptor");
}

pub mod auth;
pub mod config;
pub mod watch;

pub use pb::{
    Certificate, Cluster, Endpoint, HashFields, LbPolicy, Node, NodeState, Route, Service,
    Snapshot, Tier, UpstreamProxyProtocol,
};

/// Default Maglev table size (prime).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
