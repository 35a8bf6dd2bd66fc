//! Verification of a live pgset cluster: the seeds' tests and more, each a named check with a
//! verdict, a duration and a message.
//!
//! The verdicts are decided purely ([`checks`]) from what the edge ([`live`], [`exec`]) reads
//! through the API and prints by running `psql`, `getent` and `stat` inside the pods, so nothing
//! but a kubeconfig is needed on the machine that verifies. [`status`] is the one-screen view.

pub mod checks;
pub mod exec;
pub mod live;
pub mod ownership;
pub mod report;
pub mod sql;
pub mod status;
pub mod tls;

use std::time::Duration;

pub use checks::names;
pub use live::{Options, Verifier};
pub use report::{Check, Finding, Measurements, Report, Verdict};
pub use status::ClusterStatus;

/// Errors of the verify edge. Failed checks are not errors: they are verdicts in the report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done (`list pods of pgset`).
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A watch a wait rests on failed.
    #[error("{action}: {source}")]
    Watch {
        /// What was being watched (`watch pod pgset-3`).
        action: String,
        /// The watch's error.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// A command could not be started in a pod.
    #[error("exec `{command}` in pod {pod}: {source}")]
    Exec {
        /// The pod.
        pod: String,
        /// The program.
        command: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The exec stream broke or ended without an exit status.
    #[error("exec `{command}` in pod {pod}: {message}")]
    ExecStream {
        /// The pod.
        pod: String,
        /// The program.
        command: String,
        /// What went wrong.
        message: String,
    },
    /// The cluster is not there to verify.
    #[error(
        "StatefulSet {name} not found in namespace {namespace}: deploy it first, or name the cluster with --name / -n"
    )]
    NotDeployed {
        /// Cluster name.
        name: String,
        /// Namespace.
        namespace: String,
    },
    /// A deploy operation (scaling) failed.
    #[error(transparent)]
    Deploy(#[from] pgset_deploy::Error),
    /// Something did not happen in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The limit.
        after: Duration,
    },
}

/// Result with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a client error with what was being done.
pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}

#[cfg(test)]
mod tests;
