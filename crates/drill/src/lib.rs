//! Fault drills: a named fault is injected into a running set while a writer commits numbered
//! rows through the master and a reader reads through a replica; the drill measures what the
//! fault cost (writes refused, committed rows lost, reads refused, time until every replica
//! streams again, members copied anew) and judges it.
//!
//! The engine ([`engine`], [`load`], [`measure`], [`report`]) does not know where the set runs;
//! a target injects the faults: [`local`] (members as processes on 127.0.0.1) and [`live`] (a
//! cluster, through the API server).

pub mod engine;
pub mod isolate;
pub mod live;
pub mod load;
pub mod local;
pub mod measure;
pub mod patience;
pub mod report;

use std::fmt;
use std::str::FromStr;

pub use patience::Patience;
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
    Local(#[from] pgset_local::Error),
    /// The cluster could not be read or changed.
    #[error(transparent)]
    Live(#[from] pgset_verify::Error),
    /// Ctrl-C during a drill, after the drill undid what it changed (the message says what).
    #[error("interrupted: {0}")]
    Interrupted(String),
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
    /// Local: the master's agent is stopped (SIGTERM, fast shutdown) and started again: the
    /// local analogue of deleting the master pod.
    MasterRestart,
    /// Local: a replica's agent is stopped and started again.
    ReplicaRestart,
    /// The master's postmaster is killed with SIGKILL; its agent exits and is started again
    /// (locally by the drill's launcher, in a cluster by the kubelet).
    PostgresKill,
    /// The master restarted (locally `master-restart`, in a cluster `master-pod-delete`) while
    /// several writers commit as fast as they can.
    MasterRestartUnderLoad,
    /// The last replica is taken out of the set (its slot is dropped) and brought back.
    ScaleDownUp,
    /// Cluster: the master's pod is deleted; the StatefulSet makes it again.
    MasterPodDelete,
    /// Cluster: the last replica's pod is deleted.
    ReplicaPodDelete,
    /// A member is added, its agent is stopped while its base backup runs (in a cluster: its pod
    /// is deleted), and it must come up whole on the next try; the set is scaled back after.
    AgentRestartDuringBasebackup,
    /// Cluster, run on the NFS host: the NFS server is restarted under load.
    NfsRestart,
    /// The master's postmaster is frozen (SIGSTOP; in a cluster by exec in its container) until
    /// a replica took over; its agent gives the role up and stops it, and the old master rejoins
    /// as a replica.
    MasterFreeze,
    /// Local only: the master's agent is frozen (SIGSTOP) while its postgres keeps running; a
    /// replica takes over after the lease, and the agent is resumed (SIGCONT) after that. In a
    /// cluster the agent is PID 1 of its container, which the kernel shields from SIGSTOP sent
    /// from inside ([`DrillName::not_in_cluster`]).
    MasterAgentFreeze,
    /// Local only: the master's agent is killed (SIGKILL) and, as a container's teardown does,
    /// every other process of the member with it; the launcher starts the agent again.
    MasterAgentKill,
    /// The master is cut off from the leader record until a replica took over (locally the
    /// isolation switch; in a cluster an admission policy of the drill's own that denies the
    /// master pod's updates of the leader Lease); it must stop accepting writes first, and
    /// rejoins once reconnected.
    MasterIsolated,
    /// A replica is promoted by hand (`pg_promote()`) while the master runs, rows are written on
    /// it, and its agent is restarted (in a cluster: its pod deleted): it rejoins and keeps what
    /// it wrote aside.
    Rejoin,
    // A `switchover` drill (the master handed over on purpose by `local switchover`) belongs
    // here: judged by the same figures (writes accepted again, late commits, RPO, the masters
    // before and after), with failover expected and RPO 0 promised.
}

/// Where a drill runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A local set.
    Local,
    /// A cluster.
    Live,
}

impl DrillName {
    /// Every drill.
    pub const ALL: [DrillName; 14] = [
        DrillName::MasterRestart,
        DrillName::ReplicaRestart,
        DrillName::PostgresKill,
        DrillName::MasterRestartUnderLoad,
        DrillName::ScaleDownUp,
        DrillName::MasterPodDelete,
        DrillName::ReplicaPodDelete,
        DrillName::AgentRestartDuringBasebackup,
        DrillName::NfsRestart,
        DrillName::MasterFreeze,
        DrillName::MasterAgentFreeze,
        DrillName::MasterAgentKill,
        DrillName::MasterIsolated,
        DrillName::Rejoin,
    ];

    /// The drills a local set runs, in the order `all` runs them.
    pub const LOCAL: [DrillName; 11] = [
        DrillName::MasterRestart,
        DrillName::ReplicaRestart,
        DrillName::PostgresKill,
        DrillName::MasterRestartUnderLoad,
        DrillName::ScaleDownUp,
        DrillName::AgentRestartDuringBasebackup,
        DrillName::MasterFreeze,
        DrillName::MasterAgentFreeze,
        DrillName::MasterAgentKill,
        DrillName::MasterIsolated,
        DrillName::Rejoin,
    ];

    /// The local drills in which the master may move (failover), under a writer that follows
    /// the leader record and one that keeps its connection to the first master.
    pub const FAILOVER: [DrillName; 5] = [
        DrillName::MasterFreeze,
        DrillName::MasterAgentFreeze,
        DrillName::MasterAgentKill,
        DrillName::MasterIsolated,
        DrillName::Rejoin,
    ];

    /// The drills a cluster runs, in the order `all` runs them (`nfs-restart` only on the NFS
    /// host).
    pub const LIVE: [DrillName; 10] = [
        DrillName::MasterPodDelete,
        DrillName::MasterFreeze,
        DrillName::MasterIsolated,
        DrillName::Rejoin,
        DrillName::ReplicaPodDelete,
        DrillName::PostgresKill,
        DrillName::AgentRestartDuringBasebackup,
        DrillName::ScaleDownUp,
        DrillName::MasterRestartUnderLoad,
        DrillName::NfsRestart,
    ];

    /// The drill's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DrillName::MasterRestart => "master-restart",
            DrillName::ReplicaRestart => "replica-restart",
            DrillName::PostgresKill => "postgres-kill",
            DrillName::MasterRestartUnderLoad => "master-restart-under-load",
            DrillName::ScaleDownUp => "scale-down-up",
            DrillName::MasterPodDelete => "master-pod-delete",
            DrillName::ReplicaPodDelete => "replica-pod-delete",
            DrillName::AgentRestartDuringBasebackup => "agent-restart-during-basebackup",
            DrillName::NfsRestart => "nfs-restart",
            DrillName::MasterFreeze => "master-freeze",
            DrillName::MasterAgentFreeze => "master-agent-freeze",
            DrillName::MasterAgentKill => "master-agent-kill",
            DrillName::MasterIsolated => "master-isolated",
            DrillName::Rejoin => "rejoin",
        }
    }

    /// Whether the drill may be asked for on `target`: the drills `all` runs there, and on a
    /// cluster also the ones [`DrillName::not_in_cluster`] explains (the live target refuses
    /// them with that reason, so the user reads why instead of a bare refusal).
    pub fn runs_on(self, target: Target) -> bool {
        match target {
            Target::Local => DrillName::LOCAL.contains(&self),
            Target::Live => DrillName::LIVE.contains(&self) || self.not_in_cluster().is_some(),
        }
    }

    /// Why a failover drill of local mode cannot be done in a cluster, with the closest cluster
    /// drill (one line), or `None`.
    pub fn not_in_cluster(self) -> Option<String> {
        let (signal, closest) = match self {
            DrillName::MasterAgentFreeze => ("SIGSTOP", DrillName::MasterFreeze),
            DrillName::MasterAgentKill => ("SIGKILL", DrillName::MasterPodDelete),
            _ => return None,
        };
        Some(format!(
            "local only: in a cluster the agent is PID 1 of its postgres container, and the kernel \
             ignores {signal} sent to a PID namespace's init from inside it, so an exec cannot \
             {} the agent; run it against a local set (`--dir`), or run {closest}, the closest \
             cluster drill",
            if signal == "SIGSTOP" {
                "freeze"
            } else {
                "kill"
            }
        ))
    }

    /// Whether the drill takes the master away (the write-recovery targets apply).
    pub fn touches_master(self) -> bool {
        matches!(
            self,
            DrillName::MasterRestart
                | DrillName::PostgresKill
                | DrillName::MasterRestartUnderLoad
                | DrillName::MasterPodDelete
                | DrillName::MasterFreeze
                | DrillName::MasterAgentFreeze
                | DrillName::MasterAgentKill
                | DrillName::MasterIsolated
        )
    }

    /// Whether a replica must take over (the old master cannot come back before its lease ran
    /// out).
    pub fn fails_over(self) -> bool {
        matches!(
            self,
            DrillName::MasterFreeze | DrillName::MasterAgentFreeze | DrillName::MasterIsolated
        )
    }

    /// Whether the master may move: the failover targets (writes accepted again within
    /// [`report::FAILOVER_WRITE_TARGET_S`], no late commit) apply, and RPO is reported as
    /// measured (asynchronous replication).
    pub fn may_move_master(self) -> bool {
        self.fails_over() || self == DrillName::MasterAgentKill
    }

    /// Whether several writers commit as fast as they can.
    pub fn under_load(self) -> bool {
        matches!(
            self,
            DrillName::MasterRestartUnderLoad | DrillName::NfsRestart
        )
    }

    /// Whether the drill may legitimately copy a member anew (it changes the membership).
    pub fn may_reclone(self) -> bool {
        matches!(
            self,
            DrillName::ScaleDownUp | DrillName::AgentRestartDuringBasebackup
        )
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
        let e = "master-pod-restart".parse::<DrillName>().unwrap_err();
        assert!(e.contains("unknown drill `master-pod-restart`"), "{e}");
        assert!(e.contains("scale-down-up"), "{e}");
        assert!(e.contains("agent-restart-during-basebackup"), "{e}");
        for d in DrillName::ALL {
            assert!(
                d.runs_on(Target::Local) || d.runs_on(Target::Live),
                "{d} runs nowhere"
            );
        }
        assert!(DrillName::PostgresKill.runs_on(Target::Local));
        assert!(DrillName::PostgresKill.runs_on(Target::Live));
        assert!(!DrillName::MasterPodDelete.runs_on(Target::Local));
        assert!(DrillName::AgentRestartDuringBasebackup.runs_on(Target::Local));
        assert!(!DrillName::MasterRestart.runs_on(Target::Live));
    }

    #[test]
    fn the_failover_drills_run_in_a_cluster_after_the_master_pod_delete_except_the_agent_signals() {
        assert_eq!(
            &DrillName::LIVE[..4],
            [
                DrillName::MasterPodDelete,
                DrillName::MasterFreeze,
                DrillName::MasterIsolated,
                DrillName::Rejoin
            ]
        );
        for d in [
            DrillName::MasterFreeze,
            DrillName::MasterIsolated,
            DrillName::Rejoin,
        ] {
            assert!(d.runs_on(Target::Live) && d.runs_on(Target::Local), "{d}");
            assert_eq!(d.not_in_cluster(), None, "{d}");
        }
        // Asked for on a cluster, the agent drills are refused with the reason, never run.
        for (d, signal, closest) in [
            (DrillName::MasterAgentFreeze, "SIGSTOP", "master-freeze"),
            (DrillName::MasterAgentKill, "SIGKILL", "master-pod-delete"),
        ] {
            assert!(!DrillName::LIVE.contains(&d), "{d}");
            assert!(
                d.runs_on(Target::Live),
                "{d} reaches the live target's refusal"
            );
            let why = d.not_in_cluster().unwrap();
            assert!(!why.contains('\n'), "one line: {why}");
            assert!(why.contains("PID 1") && why.contains(signal), "{why}");
            assert!(
                why.contains(&format!("run {closest}, the closest")),
                "{why}"
            );
        }
        // The master moves in the two failover drills, not in rejoin (a replica promoted by hand
        // never holds the leader Lease).
        assert!(DrillName::MasterFreeze.fails_over() && DrillName::MasterIsolated.fails_over());
        assert!(!DrillName::Rejoin.may_move_master());
        assert!(DrillName::MasterFreeze.touches_master() && !DrillName::Rejoin.touches_master());
    }
}
