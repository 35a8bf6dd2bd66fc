//! The agent's OCI image engine: the static `pgset-agent` built with cargo and checked to be a
//! static x86-64 executable, packed into a reproducible OCI image archive, and the archive's
//! import into a node's containerd. No cluster client: the command that writes and imports the
//! archive lives in `pgset-cli`.

pub mod containerd;
pub mod oci;
pub mod reference;
pub mod static_binary;
