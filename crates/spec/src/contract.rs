//! Names shared by the deployer and the in-pod agent: env vars, labels, ports, paths.
//!
//! Every string that two crates must agree on lives here exactly once. [`AgentEnv`] is the env
//! contract as one typed value: written by deploy and local mode, read by the agent.

pub mod agent_env;
pub mod local;

pub use agent_env::{AgentEnv, AgentMode, EnvEntry, EnvError, EnvSource, MemberIdentity};
pub use local::{agent_pid_file, read_members};

/// Field manager used for every server-side apply and label patch.
pub const FIELD_MANAGER: &str = "pgset";

/// Label keys.
pub mod labels {
    /// `app.kubernetes.io/name`, always [`APP_NAME`](super::APP_NAME).
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`, the cluster name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/managed-by`, always [`APP_NAME`](super::APP_NAME).
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `app.kubernetes.io/component`.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// The role label the agent sets on its own pod (the seed's `role`), selected by the
    /// `<name>-master` and `<name>-replica` Services.
    pub const ROLE: &str = "role";
}

/// Values of the [`labels::COMPONENT`] label.
pub mod components {
    /// The short-lived pods, claims and volumes of `doctor`'s per-node mount probe. They never
    /// carry the [`NAME`](super::labels::NAME) label, so no selector of a cluster's pods,
    /// claims or Services matches them.
    pub const MOUNT_PROBE: &str = "mount-probe";
}

/// The taint kubeadm puts on a control-plane node (effect `NoSchedule`).
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// Value of the `app.kubernetes.io/name` and `managed-by` labels.
pub const APP_NAME: &str = "pgset";

/// Environment variable `cargo xtask` sets when it hands a command to the `pgset` binary: the
/// program name that binary's help and usage lines show (`cargo xtask`). Not `PGSET_*`: that
/// prefix marks the agent's contract, which a local agent is restarted with.
pub const PROGRAM_NAME_ENV: &str = "XTASK_PROGRAM_NAME";

/// How the user starts pgset's commands, for text that tells them what to run next: what
/// [`PROGRAM_NAME_ENV`] says (`cargo xtask` in a checkout), else `pgset`. Text written to a
/// host or into an artifact never uses it: that text must not depend on how it was made.
pub fn program_name() -> String {
    std::env::var(PROGRAM_NAME_ENV)
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| APP_NAME.to_string())
}

/// Annotation keys.
pub mod annotations {
    /// The agent's step on its own pod, one [`MemberPhase`](super::MemberPhase) word
    /// (`initdb`, `base-backup`, `streaming`, ...), written when the step changes; progress
    /// reports read it instead of guessing from container states.
    pub const PHASE: &str = "pgset.io/phase";
    /// A replica's base-backup progress on its own pod, one [`BaseBackupReading`](super::BaseBackupReading)
    /// as JSON, written (at most every few seconds) only while its phase is `base-backup`;
    /// absent otherwise.
    pub const BASE_BACKUP: &str = "pgset.io/base-backup";
    /// The member that holds the leader Lease (its `holderIdentity` is that pod's UID); absent
    /// once the Lease is released.
    pub const LEADER_MEMBER: &str = "pgset.io/leader-member";
    /// The timeline the leader Lease's holder serves (the last one served, once released).
    pub const LEADER_TIMELINE: &str = "pgset.io/leader-timeline";
    /// On the leader Lease: [`FAILOVER_PAUSED`] while `down`, `scale` or a switchover changes the
    /// membership on purpose; no replica takes a free or expired leader record then. Absent
    /// otherwise. Every writer of the record keeps it. (Local mode: the same note in the leader
    /// file, or the file `<cluster>.leader.paused`.)
    pub const FAILOVER: &str = "pgset.io/failover";
    /// The value of [`FAILOVER`] that pauses automatic failover.
    pub const FAILOVER_PAUSED: &str = "paused";
    /// On the leader Lease, with synchronous replication: the members (comma-separated) that
    /// hold every acknowledged commit, the only ones a failover may promote. The master names
    /// a replica here only after it was named in `synchronous_standby_names` and flushed
    /// everything written before, and removes it here before removing it there.
    pub const SYNCHRONOUS: &str = "pgset.io/synchronous";
    /// On the leader record: a switchover asked for, one [`SwitchoverRequest`](super::SwitchoverRequest)
    /// as JSON, written by `switchover` with the holder kept; the holder's agent answers it
    /// (hands over, or refuses) and removes it.
    pub const SWITCHOVER: &str = "pgset.io/switchover";
    /// On the leader record: how the last switchover or manual failover ended, one
    /// [`SwitchoverOutcome`](super::SwitchoverOutcome) as JSON. A handed-over outcome names the
    /// target and the LSN it must have received before it takes the record.
    pub const SWITCHOVER_OUTCOME: &str = "pgset.io/switchover-outcome";
    /// On the leader record: a manual failover asked for (`failover --to`), one
    /// [`SwitchoverRequest`](super::SwitchoverRequest) naming the target; only that member takes
    /// the record once it expired, failover on or off, and removes the note.
    pub const FAILOVER_TO: &str = "pgset.io/failover-to";
}

/// A switchover or manual failover asked for on the leader record ([`annotations::SWITCHOVER`],
/// [`annotations::FAILOVER_TO`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverRequest {
    /// The id the outcome repeats, so the asker knows the answer is to its request.
    pub id: String,
    /// The member to make the master; `None`: the most advanced streaming replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// When it was asked (milliseconds since the Unix epoch, the asker's clock; for people).
    pub requested_at_ms: u64,
}

impl SwitchoverRequest {
    /// A new request for `to`, with a fresh id.
    pub fn new(to: Option<&str>) -> SwitchoverRequest {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        SwitchoverRequest {
            id: format!(
                "{now:x}-{}",
                crate::random::cluster_id()
                    .map(|c| c[..8].to_string())
                    .unwrap_or_else(|_| std::process::id().to_string())
            ),
            to: to.map(str::to_string),
            requested_at_ms: u64::try_from(now).unwrap_or(u64::MAX),
        }
    }

    /// The note's value.
    pub fn to_note(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The request a note holds; `None` for anything else (a malformed note asks nothing).
    pub fn parse(text: &str) -> Option<SwitchoverRequest> {
        serde_json::from_str(text).ok()
    }
}

/// How a switchover (or a manual failover) ended, the value of
/// [`annotations::SWITCHOVER_OUTCOME`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverOutcome {
    /// The request's id.
    pub id: String,
    /// `handed-over`, `refused` (nothing stopped) or `aborted` (postgres was stopped and started
    /// again as the master), or for a manual failover `promoted`.
    pub state: String,
    /// The master that stepped down (or that was gone, for a manual failover).
    pub from: String,
    /// The member named, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Handed over: the old master's shutdown checkpoint (`X/Y`), which the target received;
    /// promoted: what the target had received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// The timeline the record named when it was written.
    pub timeline: u32,
    /// Refused or aborted: why, and what to fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl SwitchoverOutcome {
    /// The state of a hand over.
    pub const HANDED_OVER: &'static str = "handed-over";
    /// The state of a request refused before anything stopped.
    pub const REFUSED: &'static str = "refused";
    /// The state of a switchover abandoned after postgres stopped: it runs as the master again.
    pub const ABORTED: &'static str = "aborted";
    /// The state of a manual failover's promotion.
    pub const PROMOTED: &'static str = "promoted";

    /// The note's value.
    pub fn to_note(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The outcome a note holds; `None` for anything else.
    pub fn parse(text: &str) -> Option<SwitchoverOutcome> {
        serde_json::from_str(text).ok()
    }
}

/// A replica's base-backup progress as its agent measured it, the value of
/// [`annotations::BASE_BACKUP`]: the bytes in the directory being written (the agent's own
/// state, not a tool's output), the master's estimate of the total when it gave one
/// (`pg_stat_progress_basebackup.backup_total`), and when the reading was taken. Two readings
/// of one member give its rate on one clock (the agent's), whatever the reader's clock says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseBackupReading {
    /// Bytes written so far.
    pub bytes: u64,
    /// The master's estimate of what the copy streams, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// When the reading was taken: milliseconds since the Unix epoch, on the agent's clock.
    pub at_ms: u64,
}

impl BaseBackupReading {
    /// The annotation's value: `{"bytes":190840832,"total":429916160,"atMs":1796002802512}`.
    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The reading an annotation value holds; `None` for anything else (a malformed value is
    /// no reading, never an error). Fields this release does not know are ignored.
    pub fn parse(text: &str) -> Option<BaseBackupReading> {
        serde_json::from_str(text).ok()
    }
}

/// A member's step as its agent reports it in [`annotations::PHASE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberPhase {
    /// Taking the member's write fence (its Lease).
    Fencing,
    /// Checking the data directory.
    Checking,
    /// A replica waiting for the master to answer.
    WaitingForMaster,
    /// The master initialising a new database.
    Initdb,
    /// A replica copying the master.
    BaseBackup,
    /// Existing data: writing the managed configuration.
    Configuring,
    /// postgres started, not serving its role yet.
    Starting,
    /// A replica streaming from the master and serving reads.
    Streaming,
    /// The member serves its role (the master accepts writes).
    Ready,
    /// postgres runs but the member does not serve its role (any more).
    NotReady,
    /// Stopping postgres (shutdown, lost fence, or to copy the master again).
    Stopping,
    /// The agent refused to run on this data (the pod's log says why and what to do).
    Refused,
    /// The agent stopped with an error (the pod's log says why).
    Failed,
}

impl MemberPhase {
    /// Every phase, in the order a member usually passes them.
    pub const ALL: [MemberPhase; 13] = [
        MemberPhase::Fencing,
        MemberPhase::Checking,
        MemberPhase::WaitingForMaster,
        MemberPhase::Initdb,
        MemberPhase::BaseBackup,
        MemberPhase::Configuring,
        MemberPhase::Starting,
        MemberPhase::Streaming,
        MemberPhase::Ready,
        MemberPhase::NotReady,
        MemberPhase::Stopping,
        MemberPhase::Refused,
        MemberPhase::Failed,
    ];

    /// The annotation's value.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberPhase::Fencing => "fencing",
            MemberPhase::Checking => "checking",
            MemberPhase::WaitingForMaster => "waiting-for-master",
            MemberPhase::Initdb => "initdb",
            MemberPhase::BaseBackup => "base-backup",
            MemberPhase::Configuring => "configuring",
            MemberPhase::Starting => "starting",
            MemberPhase::Streaming => "streaming",
            MemberPhase::Ready => "ready",
            MemberPhase::NotReady => "not-ready",
            MemberPhase::Stopping => "stopping",
            MemberPhase::Refused => "refused",
            MemberPhase::Failed => "failed",
        }
    }

    /// The phase an annotation value names; `None` for a word this release does not know.
    pub fn parse(word: &str) -> Option<MemberPhase> {
        MemberPhase::ALL.into_iter().find(|p| p.as_str() == word)
    }

    /// A few words for a person.
    pub fn words(self) -> &'static str {
        match self {
            MemberPhase::Fencing => "taking the write fence",
            MemberPhase::Checking => "checking the data",
            MemberPhase::WaitingForMaster => "waiting for the master",
            MemberPhase::Initdb => "initdb",
            MemberPhase::BaseBackup => "base backup",
            MemberPhase::Configuring => "configuring",
            MemberPhase::Starting => "postgres starting",
            MemberPhase::Streaming => "streaming",
            MemberPhase::Ready => "serving",
            MemberPhase::NotReady => "not serving",
            MemberPhase::Stopping => "stopping",
            MemberPhase::Refused => "refused (see its log)",
            MemberPhase::Failed => "failed (see its log)",
        }
    }
}

/// Values of the [`labels::ROLE`] label.
pub mod roles {
    /// The master, ordinal 0.
    pub const MASTER: &str = "master";
    /// Every other ordinal.
    pub const REPLICA: &str = "replica";
}

/// Environment variables the deployer sets in the pod and the agent reads.
pub mod env {
    /// Name of this member (the pod name, `<cluster>-<ordinal>`).
    pub const POD_NAME: &str = "PGSET_POD_NAME";
    /// Namespace of the pod (from the downward API).
    pub const NAMESPACE: &str = "PGSET_NAMESPACE";
    /// UID of the pod (from the downward API, `metadata.uid`): the holder identity of the
    /// member's Lease, different for every incarnation of a pod with the same name.
    pub const POD_UID: &str = "PGSET_POD_UID";
    /// Cluster name (the StatefulSet name).
    pub const CLUSTER: &str = "PGSET_CLUSTER";
    /// Directory under which the member keeps its data in `<root>/<pod-name>`.
    pub const DATA_ROOT: &str = "PGSET_DATA_ROOT";
    /// Host replicas stream from (the master Service in a cluster, 127.0.0.1 locally).
    pub const MASTER_HOST: &str = "PGSET_MASTER_HOST";
    /// Port of the master.
    pub const MASTER_PORT: &str = "PGSET_MASTER_PORT";
    /// Port this member's postgres listens on.
    pub const PORT: &str = "PGSET_PORT";
    /// Address postgres listens on (`*` in a pod, `127.0.0.1` locally).
    pub const LISTEN_ADDRESSES: &str = "PGSET_LISTEN_ADDRESSES";
    /// Directory for postgres's unix socket.
    pub const SOCKET_DIR: &str = "PGSET_SOCKET_DIR";
    /// Directory holding the password files named by [`SUPERUSER_PASSWORD_KEY`](super::secret::SUPERUSER_PASSWORD_KEY)
    /// and [`REPLICATION_PASSWORD_KEY`](super::secret::REPLICATION_PASSWORD_KEY).
    pub const SECRET_DIR: &str = "PGSET_SECRET_DIR";
    /// `kubernetes` (label the pod through the API) or `local` (no API).
    pub const MODE: &str = "PGSET_MODE";
    /// Address of the agent's health endpoint (`/healthz`, `/readyz`), e.g. `0.0.0.0:8008`.
    pub const HEALTH_ADDR: &str = "PGSET_HEALTH_ADDR";
    /// Directory holding the PostgreSQL server binaries (initdb, postgres, pg_basebackup, ...).
    /// Optional: found on `PATH` or in the usual places when unset.
    pub const PG_BIN_DIR: &str = "PGSET_PG_BIN_DIR";
    /// Local mode only: a file listing the current members' names, one per line. The master's
    /// agent drops the replication slot of a member that is not listed (in a cluster it asks the
    /// API whether the member's pod exists instead).
    pub const MEMBERS_FILE: &str = "PGSET_MEMBERS_FILE";
    /// Seconds a replica waits for the master before it gives up with an error (default 600).
    pub const MASTER_WAIT_TIMEOUT: &str = "PGSET_MASTER_WAIT_TIMEOUT";
    /// Optional `pg_basebackup --max-rate` for a replica's first copy (e.g. `50M`).
    pub const BASEBACKUP_MAX_RATE: &str = "PGSET_BASEBACKUP_MAX_RATE";
    /// `true`: a data directory without pgset's identity file (made before identities existed)
    /// is taken as this member's and marked. Off by default: an unmarked directory is refused.
    pub const ADOPT_UNMARKED: &str = "PGSET_ADOPT_UNMARKED";
    /// `true`: ordinal 0 may initialise a new database although the cluster had data (its
    /// directory is gone but siblings remain), and replicas of the old database copy the new
    /// master again (their old directory kept aside). Off by default: both are refused.
    pub const ALLOW_REINIT: &str = "PGSET_ALLOW_REINIT";
    /// File the agent writes its refusal or fatal error to before it exits (the container's
    /// termination message, shown in the pod status).
    pub const TERMINATION_LOG: &str = "PGSET_TERMINATION_LOG";
    /// Seconds postgres may go without answering a new connection before `/healthz` fails
    /// (default 30; never counted while the data directory is prepared or postgres starts up).
    pub const LIVENESS_TIMEOUT: &str = "PGSET_LIVENESS_TIMEOUT";
    /// Bytes of received WAL a replica may have left to replay and still be ready (default
    /// [`DEFAULT_MAX_REPLICA_LAG_BYTES`](crate::DEFAULT_MAX_REPLICA_LAG_BYTES)).
    pub const MAX_REPLICA_LAG_BYTES: &str = "PGSET_MAX_REPLICA_LAG_BYTES";
    /// Seconds a replica's replay may stand still with WAL left to replay and the replica still
    /// be ready (default [`DEFAULT_MAX_REPLICA_LAG_SECONDS`](crate::DEFAULT_MAX_REPLICA_LAG_SECONDS)).
    pub const MAX_REPLICA_LAG_SECONDS: &str = "PGSET_MAX_REPLICA_LAG_SECONDS";
    /// `false`: no replica takes the leader record when its holder stops renewing it (default
    /// `true`: automatic failover; spec `replication.failover`).
    pub const FAILOVER: &str = "PGSET_FAILOVER";
    /// Bytes a replica may lag behind what its master last reported and still take the master
    /// role on failover (default
    /// [`DEFAULT_MAXIMUM_LAG_ON_FAILOVER`](crate::DEFAULT_MAXIMUM_LAG_ON_FAILOVER)).
    pub const MAXIMUM_LAG_ON_FAILOVER: &str = "PGSET_MAXIMUM_LAG_ON_FAILOVER";
    /// Synchronous replication, `required:N` or `preferred:N` (spec `replication.synchronous`;
    /// unset: asynchronous).
    pub const SYNCHRONOUS: &str = "PGSET_SYNCHRONOUS";
    /// An absolute directory holding the member's TLS files (names in [`tls`](super::tls)):
    /// when given, postgres serves TLS 1.3 only, pg_hba admits TCP only over TLS, replication
    /// authenticates by the replication role's client certificate, and the agent's own
    /// connections to the master verify it against the CA (`verify-full`). Unset: no TLS.
    pub const TLS_DIR: &str = "PGSET_TLS_DIR";
    /// With TLS: the networks (comma-separated CIDRs, or `none`) pg_hba admits the superuser
    /// from over TCP (default: the loopback only, where a port-forward arrives).
    pub const SUPERUSER_FROM: &str = "PGSET_SUPERUSER_FROM";
    /// With TLS: the networks (comma-separated CIDRs) pg_hba admits replication and the
    /// members' questions to the master from, by the replication certificate (default: any).
    pub const REPLICATION_FROM: &str = "PGSET_REPLICATION_FROM";

    /// Every variable of the contract, in the order [`AgentEnv::entries`](super::AgentEnv::entries)
    /// writes them.
    pub const ALL: &[&str] = &[
        MODE,
        POD_NAME,
        NAMESPACE,
        POD_UID,
        CLUSTER,
        DATA_ROOT,
        MASTER_HOST,
        MASTER_PORT,
        PORT,
        LISTEN_ADDRESSES,
        SOCKET_DIR,
        SECRET_DIR,
        HEALTH_ADDR,
        PG_BIN_DIR,
        MEMBERS_FILE,
        MASTER_WAIT_TIMEOUT,
        BASEBACKUP_MAX_RATE,
        ADOPT_UNMARKED,
        ALLOW_REINIT,
        LIVENESS_TIMEOUT,
        TERMINATION_LOG,
        MAX_REPLICA_LAG_BYTES,
        MAX_REPLICA_LAG_SECONDS,
        FAILOVER,
        MAXIMUM_LAG_ON_FAILOVER,
        SYNCHRONOUS,
        TLS_DIR,
        SUPERUSER_FROM,
        REPLICATION_FROM,
    ];
}

/// Suffix of a member's Lease name: `<pod-name>-member` (see [`member_lease_name`]).
pub const MEMBER_LEASE_SUFFIX: &str = "member";

/// The `coordination.k8s.io/v1` Lease a member holds while its PostgreSQL runs:
/// `<pod-name>-member` (`pgset-0` → `pgset-0-member`). The one place the name is spelled.
pub fn member_lease_name(pod_name: &str) -> String {
    format!("{pod_name}-{MEMBER_LEASE_SUFFIX}")
}

/// Suffix of a cluster's leader record: the Lease `<cluster>-leader` (see [`leader_lease_name`])
/// and, in local mode, the file `<cluster>.leader`.
pub const LEADER_SUFFIX: &str = "leader";

/// The `coordination.k8s.io/v1` Lease that names a cluster's master: `<cluster>-leader`
/// (`pgset` → `pgset-leader`). The one place the name is spelled.
pub fn leader_lease_name(cluster: &str) -> String {
    format!("{cluster}-{LEADER_SUFFIX}")
}

/// The ValidatingAdmissionPolicy and its binding (both cluster-scoped, one name) that the
/// `master-isolated` drill makes to deny the master pod's updates of the leader Lease:
/// `pgset-drill-<namespace>-<cluster>-isolated`. The drill removes them whatever happens; a
/// leftover (the drill's process killed) is removed by the drill's next run and by `down`.
pub fn drill_isolation_name(namespace: &str, cluster: &str) -> String {
    format!("pgset-drill-{namespace}-{cluster}-isolated")
}

/// Values of [`env::MODE`].
pub mod modes {
    /// Running in a pod: label the pod through the API.
    pub const KUBERNETES: &str = "kubernetes";
    /// Running as a local process (tests, demos): no API.
    pub const LOCAL: &str = "local";
}

/// The Secret's keys, also the file names under [`env::SECRET_DIR`].
pub mod secret {
    /// Password of the `postgres` superuser.
    pub const SUPERUSER_PASSWORD_KEY: &str = "superuser-password";
    /// Password of the replication role.
    pub const REPLICATION_PASSWORD_KEY: &str = "replication-password";
    /// The cluster id: random, made with the Secret and living as long as it; written into
    /// every member's data directory identity.
    pub const CLUSTER_ID_KEY: &str = "cluster-id";
}

/// The file names under [`env::TLS_DIR`] (PEM). The CA's key is kept only where the CA is made
/// (local mode: `<dir>/tls/ca.key`, never read by an agent); a member reads the others.
pub mod tls {
    /// The CA certificate every client and member verifies the others against.
    pub const CA_CERT: &str = "ca.crt";
    /// The CA's private key: only the one that issues certificates reads it.
    pub const CA_KEY: &str = "ca.key";
    /// The server certificate (every name a client uses to reach a member).
    pub const SERVER_CERT: &str = "server.crt";
    /// The server certificate's private key (mode 0600, owned by the postgres user).
    pub const SERVER_KEY: &str = "server.key";
    /// The replication role's client certificate (CN = [`REPLICATION_USER`](super::REPLICATION_USER)).
    pub const REPLICATION_CERT: &str = "replication.crt";
    /// The replication client certificate's private key (mode 0600).
    pub const REPLICATION_KEY: &str = "replication.key";

    /// A TLS Secret's key holding the certificate (`kubernetes.io/tls`, as cert-manager
    /// writes it).
    pub const SECRET_CERT_KEY: &str = "tls.crt";
    /// A TLS Secret's key holding the private key.
    pub const SECRET_KEY_KEY: &str = "tls.key";
    /// A TLS Secret's key holding the issuing CA's certificate (cert-manager's `ca.crt`).
    pub const SECRET_CA_KEY: &str = "ca.crt";
    /// The CA ConfigMap's key: the CA certificate clients verify the server against.
    pub const CONFIGMAP_CA_KEY: &str = "ca.crt";

    /// The pod annotation where a member's agent says which TLS files its PostgreSQL has
    /// loaded (written by the agent on its own pod only): JSON `{"caBundle": <digest>,
    /// "certs": <digest>}`, each a SHA-256 in lowercase hex, of [`CA_CERT`]'s bytes and of
    /// [`SERVER_CERT`]'s then [`REPLICATION_CERT`]'s bytes. A CA rotation waits on it.
    pub const LOADED_ANNOTATION: &str = "pgset.io/tls-loaded";
    /// The same value in the agent's `/status` detail (local mode reads it there).
    pub const LOADED_DETAIL: &str = "tlsLoaded";
    /// [`LOADED_ANNOTATION`]'s key of the CA bundle's digest.
    pub const LOADED_CA_BUNDLE: &str = "caBundle";
    /// [`LOADED_ANNOTATION`]'s key of the certificates' digest.
    pub const LOADED_CERTS: &str = "certs";
}

/// The identity file in every member's data directory (namespace, cluster, cluster id, member,
/// PostgreSQL system identifier).
pub const IDENTITY_FILE: &str = "pgset-identity.json";
/// The cluster record ConfigMap (`<name>-record`): its data keys, their values, its finalizer
/// and the pod annotation it is rebuilt from. `deploy` creates it (never overwriting a key the
/// agent wrote), the master's agent fills it; a missing, unreadable or unknown record never
/// allows an initdb.
pub mod record {
    /// What the record says about the cluster's data: one of [`STATE_NEW`], [`STATE_DATA`],
    /// [`STATE_DATA_EXPECTED`].
    pub const STATE: &str = "state";
    /// `deploy` made the record for a cluster with no Secret, member pod or claim before it:
    /// no data yet, the master may initialise one.
    pub const STATE_NEW: &str = "new";
    /// The master recorded the database system it runs ([`SYSTEM_IDENTIFIER`]).
    pub const STATE_DATA: &str = "data";
    /// `deploy` rebuilt a missing record for a cluster whose Secret, pods or claims prove it
    /// existed, and no member told its database system: data is expected, its system
    /// identifier unknown. The agent refuses initdb as for [`STATE_DATA`]; a master starting on
    /// its own data (proven by its identity) fills the system identifier in.
    pub const STATE_DATA_EXPECTED: &str = "data-expected";
    /// The database system identifier the cluster was initialised with.
    pub const SYSTEM_IDENTIFIER: &str = "systemIdentifier";
    /// The cluster id (from the Secret) of the data that identifier belongs to.
    pub const CLUSTER_ID: &str = "clusterId";
    /// The opt-in `postgres.allowReinit` was used: the system identifier (or
    /// [`UNKNOWN_SYSTEM`]) the new database replaced, written before that initdb. The opt-in
    /// allows no further initdb while this key names anything but the recorded
    /// [`SYSTEM_IDENTIFIER`] (which is a retry of that same initialisation); removing the key
    /// allows one more on purpose.
    pub const REINIT_REPLACED: &str = "reinitReplaced";
    /// The database system that initialisation on the opt-in made.
    pub const REINIT_SYSTEM_IDENTIFIER: &str = "reinitSystemIdentifier";
    /// [`REINIT_REPLACED`]'s value when the replaced system identifier was not known.
    pub const UNKNOWN_SYSTEM: &str = "unknown";
    /// The record's finalizer: a `kubectl delete` leaves the record in place (terminating, still
    /// read by the agent as it is); only `down --purge --yes` removes it.
    pub const FINALIZER: &str = "pgset.io/record";
    /// A member's data identity on its own pod, `{"clusterId": .., "systemIdentifier": ..}`,
    /// published by its agent once its data is in place: `deploy` rebuilds a missing record
    /// from it.
    pub const POD_IDENTITY_ANNOTATION: &str = "pgset.io/data-identity";
    /// Local mode's record, a file in the data root holding the same keys as JSON (local mode
    /// has no ConfigMap); only [`REINIT_REPLACED`] and [`REINIT_SYSTEM_IDENTIFIER`] are kept
    /// there, the sibling directories being local mode's evidence of data.
    pub const LOCAL_FILE: &str = "pgset-record.json";
}

/// Suffixes of what the agent keeps beside a member's directory in the data root
/// (`<member>.<suffix>`: the copy in progress, the one kept older copy, the write lock, local
/// mode's log and termination message). No cluster may be named like one: another cluster's
/// directory on the same export is `<namespace>.<name>`.
pub const MEMBER_SUFFIXES: &[&str] = &[
    "bootstrap",
    "previous",
    "lock",
    "log",
    "termination-log",
    LEADER_SUFFIX,
];

/// Kubernetes' default container termination-message path.
pub const TERMINATION_LOG_PATH: &str = "/dev/termination-log";
/// The PostgreSQL majors the agent supports (every setting it writes is understood by each).
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 13..=18;

/// Name of the container that runs the agent and PostgreSQL (also the pod's default container
/// for kubectl).
pub const POSTGRES_CONTAINER: &str = "postgres";
/// The PostgreSQL superuser.
pub const SUPERUSER: &str = "postgres";
/// The role replicas connect as.
pub const REPLICATION_USER: &str = "replicator";
/// PostgreSQL port inside the pod.
pub const POSTGRES_PORT: u16 = 5432;
/// The agent's health endpoint port inside the pod.
pub const HEALTH_PORT: u16 = 8008;
/// Path of the health endpoint that says postgres is alive.
pub const HEALTH_LIVE_PATH: &str = "/healthz";
/// Path of the agent's JSON status (phase, readiness and why, PostgreSQL's state, slots).
pub const HEALTH_STATUS_PATH: &str = "/status";
/// Path of the startup endpoint: true once the agent serves its endpoints (liveness then judges
/// whether the member makes progress).
pub const HEALTH_STARTUP_PATH: &str = "/startupz";
/// Path of the health endpoint that says the member serves its role.
pub const HEALTH_READY_PATH: &str = "/readyz";
/// Where the data volume is mounted in the pod.
pub const DATA_MOUNT: &str = "/pgdata";
/// Where the Secret's password files are mounted in the pod.
pub const SECRET_MOUNT: &str = "/etc/pgset/secret";
/// Where the member's TLS files are mounted in a cluster ([`env::TLS_DIR`] there): the server and
/// replication Secrets projected under the file names of [`tls`].
pub const TLS_MOUNT: &str = "/etc/pgset/tls";
/// Where the init container installs the agent binary (an emptyDir).
pub const AGENT_DIR: &str = "/pgset/bin";
/// File name of the agent binary.
pub const AGENT_BIN: &str = "pgset-agent";
/// Socket directory inside the pod.
pub const SOCKET_DIR: &str = "/var/run/postgresql";
/// Path of the static agent binary inside the agent image (its entrypoint); the init container
/// runs `<this> install <AGENT_DIR>/<AGENT_BIN>`.
pub const AGENT_IMAGE_BINARY: &str = "/pgset-agent";

#[cfg(test)]
mod phase_tests {
    use super::{BaseBackupReading, MemberPhase};

    #[test]
    fn a_base_backup_reading_reads_back_and_anything_malformed_is_none() {
        let r = BaseBackupReading {
            bytes: 190_840_832,
            total: Some(429_916_160),
            at_ms: 1_796_002_802_512,
        };
        let text = r.to_annotation();
        assert_eq!(
            text,
            r#"{"bytes":190840832,"total":429916160,"atMs":1796002802512}"#
        );
        assert_eq!(BaseBackupReading::parse(&text), Some(r));
        let unknown_total = BaseBackupReading { total: None, ..r };
        assert_eq!(
            unknown_total.to_annotation(),
            r#"{"bytes":190840832,"atMs":1796002802512}"#
        );
        assert_eq!(
            BaseBackupReading::parse(&unknown_total.to_annotation()),
            Some(unknown_total)
        );
        for bad in [
            "",
            "182 MB",
            "{}",
            r#"{"bytes":1}"#,
            r#"{"bytes":-1,"atMs":1}"#,
            r#"{"bytes":"1","atMs":1}"#,
            r#"{"bytes":1.5,"atMs":1}"#,
            r#"{"bytes":1,"total":null,"atMs":1"#,
            r#"[1,2]"#,
        ] {
            assert_eq!(BaseBackupReading::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            BaseBackupReading::parse(r#"{"bytes":1,"atMs":2,"phase":"streaming"}"#),
            Some(BaseBackupReading {
                bytes: 1,
                total: None,
                at_ms: 2
            }),
            "a field of a later release is ignored"
        );
    }

    #[test]
    fn every_phase_word_parses_back_and_is_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for p in MemberPhase::ALL {
            assert_eq!(MemberPhase::parse(p.as_str()), Some(p));
            assert!(seen.insert(p.as_str()), "{} twice", p.as_str());
            assert!(p.words().len() <= 24, "{}: keep it short", p.words());
        }
        assert_eq!(
            MemberPhase::parse("base-backup"),
            Some(MemberPhase::BaseBackup)
        );
        assert_eq!(MemberPhase::parse("Base-Backup"), None);
        assert_eq!(MemberPhase::parse(""), None);
    }
}
