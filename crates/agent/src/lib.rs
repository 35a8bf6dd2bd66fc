//! The in-pod agent: the master role from the leader record, per-pod PGDATA, master init or replica base backup,
//! self-labelling through the API, supervising postgres. Local mode (pgset-local) runs the same
//! agent as processes on 127.0.0.1.

pub(crate) mod bootstrap;
pub mod datadir;
pub mod fence;
pub(crate) mod follow;
pub mod health;
pub mod identity;
pub mod install;
pub mod kube_api;
pub mod leader;
pub(crate) mod log;
pub mod meter;
pub(crate) mod pg;
pub mod pgbin;
pub mod phase;
pub mod privilege;
pub mod render;
pub mod renew;
pub mod rewind;
pub mod role;
pub mod run;
pub mod settings;
pub(crate) mod supervise;
pub mod switchover;
pub mod sync;
pub mod tls;
pub mod watchdog;

use std::path::PathBuf;

pub(crate) use log::{info, warn};
/// The agent's PostgreSQL client, for local status (which asks a local set's members the
/// agent's own questions).
pub use pg::{Db, StandbyRow, cannot_connect_now, standbys};

/// Writes one line to the agent's log (timestamped, on stderr): how the binary routes the
/// command crate's `$ command` lines into it.
pub fn log_line(line: &str) {
    info!("{line}");
}

/// Everything that can stop the agent, with the context a user needs to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable of the contract is missing or malformed.
    #[error("environment variable {var}: {problem}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The data root or a data directory is unusable.
    #[error("{}: {problem}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The member's write fence cannot be taken or is no longer held: another writer may own
    /// the data directory, so PostgreSQL must not run on it.
    #[error("{}: {problem}", path.display())]
    Fence {
        /// The data directory the fence guards.
        path: PathBuf,
        /// Who holds it and what to do.
        problem: String,
    },
    /// A file operation failed.
    #[error("{action}")]
    Io {
        /// What the agent was doing.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A host command failed: the command, its exit status and the tail of its stderr.
    #[error(transparent)]
    Command(#[from] pgset_command::Error),
    /// The PostgreSQL binaries were not found.
    #[error("PostgreSQL binaries not found: {0}")]
    PgBinaries(String),
    /// The master did not answer within the deadline.
    #[error(
        "the master {host}:{port} did not accept connections within {secs} s (raise {var} or check the master)"
    )]
    MasterTimeout {
        /// Master host.
        host: String,
        /// Master port.
        port: u16,
        /// The deadline in seconds.
        secs: u64,
        /// The env var that sets it.
        var: &'static str,
    },
    /// Dropping root privileges to the postgres user failed.
    #[error("cannot run as the postgres user: {0}")]
    Privilege(String),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(String),
    /// A step failed for a reason said in words (no connection, a task that did not finish).
    #[error("{0}")]
    Failed(String),
    /// The agent refuses to start PostgreSQL on a data directory (or to initialise one): it is
    /// not provably this member's, or starting would hide that data existed.
    #[error("refusing to use {}: {problem}", path.display())]
    Refused {
        /// The directory.
        path: PathBuf,
        /// Whose it is, why, and the fix.
        problem: String,
    },
    /// A PostgreSQL connection or query failed.
    #[error("{what}: {source}")]
    Sql {
        /// What the agent asked, and of whom.
        what: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// PostgreSQL did not answer within the deadline.
    #[error("{what}: no answer within {} ms", timeout.as_millis())]
    SqlTimeout {
        /// What the agent asked, and of whom.
        what: String,
        /// The deadline.
        timeout: std::time::Duration,
    },
}

impl From<pgset_spec::contract::EnvError> for Error {
    fn from(e: pgset_spec::contract::EnvError) -> Error {
        Error::Env {
            var: e.var,
            problem: e.problem,
        }
    }
}

impl Error {
    /// The exit code for this error: 2 for a refusal (nothing was changed), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused { .. } | Error::Fence { .. } => 2,
            _ => 1,
        }
    }
}

/// The agent's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what the agent was doing.
pub(crate) fn io_err(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let action = action.into();
    move |source| Error::Io { action, source }
}
