//! The agent's OCI image engine: the static `pgset-agent` built with cargo and checked to be a
//! static x86-64 executable, packed into a reproducible OCI image archive. No cluster client: the
//! commands that write or import the archive live in `pgset-cli`.

pub mod oci;
pub mod reference;
pub mod static_binary;
