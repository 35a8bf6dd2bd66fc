//! Fault drills: a named fault is injected into a running set while a writer commits numbered
//! rows through the master and a reader reads through a replica; the drill measures what the
//! fault cost (writes refused, committed rows lost, reads refused, time until every replica
//! streams again, members copied anew) and judges it.
//!
//! The engine (load, measurement, verdict, report) does not know where the set runs; a target
//! injects the faults. [`local`] is the local-mode target (members as processes on 127.0.0.1).

pub mod load;
pub mod local;
pub mod measure;
pub mod report;

use std::fmt;
use std::str::FromStr;

pub use report::{DrillReport, Verdict};

/// Errors of a drill that could not be run or finished.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The set is not healthy, so the drill refused to start (nothing was changed).
    #[error("the set is not healthy, so no drill was started: {0}")]
    NotHealthy(String),
    /// The drill does not apply to this target or set.
    #[error("{drill}: {why}")]
    NotApplicable {
        /// The drill.
        drill: DrillName,
        /// Why not.
        why: String,
    },
    /// A step of the drill failed.
    #[error("{step}: {message}")]
    Step {
        /// The step, in words.
        step: String,
        /// What went wrong.
        message: String,
    },
    /// Local mode reported an error.
    #[error(transparent)]
    Local(#[from] pgset_agent::Error),
}

/// The drills' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn step_err(step: impl Into<String>, message: impl fmt::Display) -> Error {
    Error::Step {
        step: step.into(),
        message: message.to_string(),
    }
}

/// A named drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillName {
    /// The master's agent is stopped (SIGTERM, fast shutdown) and started again: the local
    /// analogue of deleting the master pod.
    MasterRestart,
    /// A replica's agent is stopped and started again.
    ReplicaRestart,
    /// The master's postmaster is killed with SIGKILL; its agent exits and is started again.
    PostgresKill,
    /// `master-restart` while several writers commit as fast as they can.
    MasterRestartUnderLoad,
    /// The last replica is taken out of the set (its slot is dropped) and brought back.
    ScaleDownUp,
}

impl DrillName {
    /// Every drill, in the order `all` runs them.
    pub const ALL: [DrillName; 5] = [
        DrillName::MasterRestart,
        DrillName::ReplicaRestart,
        DrillName::PostgresKill,
        DrillName::MasterRestartUnderLoad,
        DrillName::ScaleDownUp,
    ];

    /// The drill's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DrillName::MasterRestart => "master-restart",
            DrillName::ReplicaRestart => "replica-restart",
            DrillName::PostgresKill => "postgres-kill",
            DrillName::MasterRestartUnderLoad => "master-restart-under-load",
            DrillName::ScaleDownUp => "scale-down-up",
        }
    }

    /// Whether the drill takes the master away (the write-recovery targets apply).
    pub fn touches_master(self) -> bool {
        matches!(
            self,
            DrillName::MasterRestart | DrillName::PostgresKill | DrillName::MasterRestartUnderLoad
        )
    }

    /// Whether the drill may legitimately copy a member anew (it changes the membership).
    pub fn may_reclone(self) -> bool {
        matches!(self, DrillName::ScaleDownUp)
    }
}

impl fmt::Display for DrillName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DrillName {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        DrillName::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = DrillName::ALL.iter().map(|d| d.as_str()).collect();
                format!("unknown drill `{s}`: use one of {}", known.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known() {
        for d in DrillName::ALL {
            assert_eq!(d.as_str().parse::<DrillName>().unwrap(), d);
            assert_eq!(
                serde_json::to_value(d).unwrap(),
                serde_json::json!(d.as_str())
            );
        }
        let e = "master-pod-delete".parse::<DrillName>().unwrap_err();
        assert!(e.contains("unknown drill `master-pod-delete`"), "{e}");
        assert!(e.contains("scale-down-up"), "{e}");
    }
}
