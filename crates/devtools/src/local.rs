//! The agent's build from the source tree, as the benchmarks name it.

pub use pgset_cli::cli::build_agent;
