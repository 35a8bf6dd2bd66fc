//! The nodes' addresses, as the live benchmark names them.

pub use pgset_cli::context::node_addresses;
