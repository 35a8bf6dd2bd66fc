//! The CLI's shared parts the tools use (arguments, stage lines, the source tree), under the
//! names the tools' modules use.

pub use pgset_cli::args::{ClientArgs, SpecArgs};
pub use pgset_cli::cli::{Stage, require_checkout, workspace_root};
