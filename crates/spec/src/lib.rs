//! The cluster spec: what pgset builds, loaded from `pgset.yaml` and flags, validated once.
//!
//! [`ClusterSpec::load`] reads the file (unknown fields rejected, errors with line and column),
//! applies [`Overrides`] from the command line and validates the result into a [`ValidSpec`].
//! What changes a host or a cluster takes a `&ValidSpec`; pure builders read it as a
//! `&ClusterSpec` through `Deref`.

pub mod cidr;
pub mod contract;
mod hint;
pub mod image_ref;
pub mod random;
pub mod status;
mod valid;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cidr::Cidr;
pub use valid::ValidSpec;
pub use validate::{
    SYSTEM_EXPORT_PATH_FIX, is_dns1123_label, is_dns1123_subdomain, is_image_reference,
    parse_quantity_bytes, system_export_path_problem, validate_export_path,
};

/// Version of pgset (also the agent image's tag).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The file read when `--config` is not given and it exists in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "pgset.yaml";

/// Default cluster name (the seed's).
pub const DEFAULT_NAME: &str = "pgset";
/// Default namespace.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default number of members.
pub const DEFAULT_REPLICAS: i32 = 2;
/// Largest number of members pgset accepts.
pub const MAX_REPLICAS: i32 = 32;
/// Default NFS export (the seed's).
pub const DEFAULT_EXPORT: &str = "/nfsfileshare";
/// Default PostgreSQL image: the official image of a current major.
pub const DEFAULT_POSTGRES_IMAGE: &str = "postgres:18";
/// uid and gid of the `postgres` user in the official image.
pub const DEFAULT_POSTGRES_UID: i64 = 999;
/// Longest cluster name: pod names `<name>-NN` and the StatefulSet's
/// `controller-revision-hash` label (name + 11 characters) must stay within 63.
pub const MAX_NAME_LEN: usize = 52;

/// The default agent image reference, tagged with this version.
pub fn default_agent_image() -> String {
    format!("docker.io/library/pgset-agent:{VERSION}")
}

/// Errors from loading or validating a spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for the spec (syntax, type or unknown field).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has a value pgset does not accept.
    #[error("invalid {field} {value:?}: {problem}; {fix}")]
    Invalid {
        /// The field, as written in `pgset.yaml` (and the matching flag).
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        problem: String,
        /// What to do instead.
        fix: String,
    },
}

/// Result with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How member data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// One ReadWriteMany claim (`<name>-pvc`) on NFS shared by every pod; each member keeps its
    /// data in `<mount>/<pod-name>` (seeds 000/001).
    #[default]
    Shared,
    /// `volumeClaimTemplates`: one claim `data-<pod-name>` per member (seeds 003/004).
    Templates,
}

impl StorageMode {
    /// The name used in YAML and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageMode::Shared => "shared",
            StorageMode::Templates => "templates",
        }
    }
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StorageMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "shared" => Ok(StorageMode::Shared),
            "templates" => Ok(StorageMode::Templates),
            other => Err(format!(
                "unknown storage mode {other:?}: use `shared` or `templates`"
            )),
        }
    }
}

/// How the StatefulSet starts its members (its `podManagementPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum PodManagementPolicy {
    /// One member after the other, each once the previous is Ready.
    #[default]
    OrderedReady,
    /// All members at once: each replica's agent waits for the master, then copies it.
    Parallel,
}

impl PodManagementPolicy {
    /// The name used in YAML and in the StatefulSet.
    pub fn as_str(self) -> &'static str {
        match self {
            PodManagementPolicy::OrderedReady => "OrderedReady",
            PodManagementPolicy::Parallel => "Parallel",
        }
    }
}

impl fmt::Display for PodManagementPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole cluster spec. Field names are those of `pgset.yaml` (camelCase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClusterSpec {
    /// Cluster name: StatefulSet, headless Service, prefix of every object.
    pub name: String,
    /// Namespace of every namespaced object.
    pub namespace: String,
    /// Number of members (pods); ordinal 0 is the master.
    pub replicas: i32,
    /// Storage.
    pub storage: StorageSpec,
    /// The NFS export backing the volumes.
    pub nfs: NfsSpec,
    /// PostgreSQL.
    pub postgres: PostgresSpec,
    /// The agent image.
    pub agent: AgentSpec,
    /// Compute resources of the postgres container.
    pub resources: ResourcesSpec,
    /// Probe timings.
    pub probes: ProbesSpec,
    /// Replication: how far a replica may fall behind and still serve reads.
    pub replication: ReplicationSpec,
    /// Let the members run on control-plane nodes: the pods tolerate kubeadm's
    /// `node-role.kubernetes.io/control-plane:NoSchedule` taint. Off by default: a one-node lab
    /// is better untainted, and a cluster with workers keeps its control plane free.
    pub tolerate_control_plane: bool,
    /// How the StatefulSet starts the members: `OrderedReady` (the default) or `Parallel`.
    pub pod_management_policy: PodManagementPolicy,
    /// TLS: `auto` (the default: pgset keeps a CA and the certificates in Secrets of the
    /// cluster), `provided` (the user's Secrets) or `off`.
    pub tls: TlsSpec,
    /// Who may connect over TCP besides clients with a password (with TLS on; `tls.mode: off`
    /// keeps the pg_hba.conf initdb wrote).
    pub access: AccessSpec,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            name: DEFAULT_NAME.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            replicas: DEFAULT_REPLICAS,
            storage: StorageSpec::default(),
            nfs: NfsSpec::default(),
            postgres: PostgresSpec::default(),
            agent: AgentSpec::default(),
            resources: ResourcesSpec::default(),
            probes: ProbesSpec::default(),
            replication: ReplicationSpec::default(),
            tolerate_control_plane: false,
            pod_management_policy: PodManagementPolicy::default(),
            tls: TlsSpec::default(),
            access: AccessSpec::default(),
        }
    }
}

/// `access`: the networks pg_hba admits the superuser and replication from (with TLS on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AccessSpec {
    /// Networks the superuser may log in from over TCP (TLS and its password), besides the
    /// loopback a port-forward arrives on. Default none: the superuser is for the local socket
    /// and port-forwards; applications use roles of their own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub superuser_from: Vec<Cidr>,
    /// Networks replication (and a member's questions to the master before a rewind) may come
    /// from, always with the replication certificate. Default: the cluster's pod network, as
    /// `deploy` finds it (kubeadm's `podSubnet`, else the nodes' pod CIDRs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replication_from: Vec<Cidr>,
}

/// Where the members' TLS certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// `deploy` makes a CA kept in Secret `<name>-ca`, and from it the server and replication
    /// certificates in Secrets of their own, renewed when due; the CA's certificate is also in
    /// ConfigMap `<name>-ca-cert` for clients.
    #[default]
    Auto,
    /// The user's Secrets (`tls.serverSecret`, `tls.replicationSecret`), in cert-manager's shape
    /// (`tls.crt`, `tls.key`, `ca.crt`); pgset only reads them.
    Provided,
    /// No TLS: postgres serves plain TCP and replication authenticates by password.
    Off,
}

impl TlsMode {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Auto => "auto",
            TlsMode::Provided => "provided",
            TlsMode::Off => "off",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `tls`: where the certificates come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsSpec {
    /// `auto` (default), `provided` or `off`.
    pub mode: TlsMode,
    /// `provided` only: the Secret holding the server certificate (`tls.crt`, naming every host
    /// clients use), its key (`tls.key`) and the CA (`ca.crt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_secret: Option<String>,
    /// `provided` only: the Secret holding the replication role's client certificate
    /// (`tls.crt`, CN = the replication user), its key (`tls.key`) and the CA (`ca.crt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_secret: Option<String>,
}

impl TlsSpec {
    /// Whether the members serve TLS.
    pub fn enabled(&self) -> bool {
        self.mode != TlsMode::Off
    }
}

/// Replication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ReplicationSpec {
    /// A replica whose replay is further behind than this (or paused) is not ready: it leaves
    /// the replica Service and says why.
    pub max_replica_lag: LagBound,
    /// Automatic failover: when the master stops renewing the leader record, the most advanced
    /// eligible replica takes it and is promoted (default on).
    pub failover: bool,
    /// Bytes a replica may lag behind what the master last reported to it and still be
    /// promoted on failover (default [`DEFAULT_MAXIMUM_LAG_ON_FAILOVER`]).
    pub maximum_lag_on_failover: u64,
    /// Synchronous replication (absent: asynchronous): a commit is acknowledged once `number`
    /// replicas flushed it, and only those may be promoted on failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<Synchronous>,
}

/// `replication.synchronous`: how many replicas confirm each commit, and what happens when
/// fewer are streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Synchronous {
    /// Replicas that flush each commit before it is acknowledged (default 1).
    #[serde(default = "one")]
    pub number: u32,
    /// `required` (default): commits wait while fewer replicas stream; `preferred`: the master
    /// names only the replicas that stream, down to none (then it is asynchronous).
    #[serde(default)]
    pub durability: Durability,
}

fn one() -> u32 {
    1
}

/// What a commit waits for when fewer synchronous replicas stream than asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Commits wait until enough named replicas flushed them: no acknowledged write is lost
    /// on failover, and writes stop while too few replicas run.
    #[default]
    Required,
    /// Only the replicas that stream are named (none: asynchronous): writes never wait for a
    /// replica that is down.
    Preferred,
}

impl Durability {
    /// The name used in YAML and in the env contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Required => "required",
            Durability::Preferred => "preferred",
        }
    }
}

impl Synchronous {
    /// The env contract's spelling: `required:1`, `preferred:2`.
    pub fn to_env(self) -> String {
        format!("{}:{}", self.durability.as_str(), self.number)
    }

    /// Parses [`Synchronous::to_env`]'s spelling.
    pub fn from_env(text: &str) -> Option<Synchronous> {
        let (d, n) = text.split_once(':')?;
        let durability = match d {
            "required" => Durability::Required,
            "preferred" => Durability::Preferred,
            _ => return None,
        };
        let number = n.parse::<u32>().ok().filter(|n| *n >= 1)?;
        Some(Synchronous { number, durability })
    }
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        ReplicationSpec {
            max_replica_lag: LagBound::default(),
            failover: true,
            maximum_lag_on_failover: DEFAULT_MAXIMUM_LAG_ON_FAILOVER,
            synchronous: None,
        }
    }
}

/// How far behind the WAL it received a replica's replay may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LagBound {
    /// WAL received but not yet replayed, in bytes.
    pub bytes: u64,
    /// Seconds since replay last made progress while WAL waits to be replayed.
    pub seconds: u64,
}

/// [`LagBound::bytes`] by default: one WAL segment of 16 MiB.
pub const DEFAULT_MAX_REPLICA_LAG_BYTES: u64 = 16 * 1024 * 1024;
/// [`LagBound::seconds`] by default.
pub const DEFAULT_MAX_REPLICA_LAG_SECONDS: u64 = 10;

/// How far (bytes) a replica may lag behind what its master last reported and still be promoted
/// on failover (`replication.maximumLagOnFailover`).
pub const DEFAULT_MAXIMUM_LAG_ON_FAILOVER: u64 = 1024 * 1024;

impl Default for LagBound {
    fn default() -> Self {
        LagBound {
            bytes: DEFAULT_MAX_REPLICA_LAG_BYTES,
            seconds: DEFAULT_MAX_REPLICA_LAG_SECONDS,
        }
    }
}

/// Storage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StorageSpec {
    /// `shared` (default) or `templates`.
    pub mode: StorageMode,
    /// Size of each volume and claim, a Kubernetes quantity.
    pub size: String,
    /// `templates` mode: a StorageClass to provision claims from. Unset: pgset's own NFS
    /// PersistentVolumes, pre-bound per ordinal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            mode: StorageMode::Shared,
            size: "1Gi".into(),
            storage_class: None,
        }
    }
}

/// The NFS export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NfsSpec {
    /// Absolute path of the export on the NFS host.
    pub export: PathBuf,
    /// Address of the NFS server as the nodes reach it. Unset: detected by the provisioner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// NFS protocol version mounted by the nodes.
    pub version: String,
}

impl Default for NfsSpec {
    fn default() -> Self {
        NfsSpec {
            export: PathBuf::from(DEFAULT_EXPORT),
            server: None,
            version: "4.1".into(),
        }
    }
}

/// PostgreSQL settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PostgresSpec {
    /// The official `postgres` image (or one built like it).
    pub image: String,
    /// uid of the postgres user in the image; owner of the data.
    pub uid: i64,
    /// gid of the postgres user in the image.
    pub gid: i64,
    /// Explicit opt-in: take a data directory without pgset's identity file (made by a pgset
    /// version before data identities) as the member's own, and mark it.
    pub adopt_unmarked_data: bool,
    /// Explicit opt-in: ordinal 0 may initialise a new, empty database although the cluster had
    /// data, and replicas of the old database then copy the new master (their data kept aside).
    pub allow_reinit: bool,
}

impl Default for PostgresSpec {
    fn default() -> Self {
        PostgresSpec {
            image: DEFAULT_POSTGRES_IMAGE.into(),
            uid: DEFAULT_POSTGRES_UID,
            gid: DEFAULT_POSTGRES_UID,
            adopt_unmarked_data: false,
            allow_reinit: false,
        }
    }
}

/// The agent image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AgentSpec {
    /// Image holding the static `pgset-agent` binary.
    pub image: String,
    /// `IfNotPresent` (default: the image is imported into the node's containerd), `Always` or
    /// `Never`.
    pub pull_policy: String,
    /// How the binary reaches the postgres container: `copy` (default: an init container copies
    /// it into an emptyDir, on any cluster) or `image` (the agent image mounted as an image
    /// volume, no init container: Kubernetes 1.35+ or the `ImageVolume` feature gate, and a
    /// runtime that mounts image volumes executable, such as containerd 2.1+).
    pub delivery: AgentDelivery,
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            image: default_agent_image(),
            pull_policy: "IfNotPresent".into(),
            delivery: AgentDelivery::default(),
        }
    }
}

/// `agent.delivery`: how the agent binary reaches the postgres container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum AgentDelivery {
    /// An init container copies the binary from the agent image into an emptyDir.
    #[default]
    Copy,
    /// The agent image is mounted as an image volume; the postgres container runs the binary
    /// from it.
    Image,
}

impl AgentDelivery {
    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentDelivery::Copy => "copy",
            AgentDelivery::Image => "image",
        }
    }
}

/// Requests and limits of the postgres container, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResourcesSpec {
    /// CPU request.
    pub cpu_request: String,
    /// Memory request.
    pub memory_request: String,
    /// Memory limit (no CPU limit: throttling a database hurts more than it helps).
    pub memory_limit: String,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        ResourcesSpec {
            cpu_request: "100m".into(),
            memory_request: "256Mi".into(),
            memory_limit: "1Gi".into(),
        }
    }
}

/// Probe timings, in seconds. The agent answers its probes over HTTP, so they are cheap and
/// can be frequent; liveness stays patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProbesSpec {
    /// Readiness period: how soon a ready member is noticed (and the next ordinal started).
    pub readiness_period_seconds: i32,
    /// Startup period.
    pub startup_period_seconds: i32,
    /// How long the agent may take to answer its startup probe (it does once it serves its
    /// endpoints) before the container is restarted. Preparing the data (initdb, a base backup)
    /// and recovery are not bounded by it: liveness restarts a member only when they make no
    /// progress for the liveness timeout.
    pub startup_timeout_seconds: i32,
    /// Liveness period.
    pub liveness_period_seconds: i32,
    /// Consecutive liveness failures before a restart.
    pub liveness_failure_threshold: i32,
    /// Timeout of each probe request.
    pub timeout_seconds: i32,
    /// Grace period for a clean (fast) shutdown.
    pub termination_grace_period_seconds: i64,
}

impl Default for ProbesSpec {
    fn default() -> Self {
        ProbesSpec {
            readiness_period_seconds: 1,
            startup_period_seconds: 1,
            startup_timeout_seconds: 1800,
            liveness_period_seconds: 10,
            liveness_failure_threshold: 6,
            timeout_seconds: 2,
            termination_grace_period_seconds: 90,
        }
    }
}

/// Values from the command line that override the file. `None` leaves the file's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--name`
    pub name: Option<String>,
    /// `-n/--namespace`
    pub namespace: Option<String>,
    /// `--replicas`
    pub replicas: Option<i32>,
    /// `--storage`
    pub storage: Option<StorageMode>,
    /// `--nfs-export`
    pub nfs_export: Option<PathBuf>,
    /// `--nfs-server`
    pub nfs_server: Option<String>,
    /// `--postgres-image`
    pub postgres_image: Option<String>,
    /// `--agent-image`
    pub agent_image: Option<String>,
    /// `--tolerate-control-plane` (the flag only turns it on)
    pub tolerate_control_plane: Option<bool>,
}

impl ClusterSpec {
    /// Loads the spec: `config` if given (it must exist), else `./pgset.yaml` when present,
    /// else the defaults; then applies `overrides` and validates.
    pub fn load(config: Option<&Path>, overrides: &Overrides) -> Result<ValidSpec> {
        let mut spec = match config {
            Some(path) => Self::read(path)?,
            None => {
                let path = Path::new(DEFAULT_CONFIG_FILE);
                if path.exists() {
                    Self::read(path)?
                } else {
                    ClusterSpec::default()
                }
            }
        };
        spec.apply(overrides);
        spec.validated()
    }

    /// Reads and parses a spec file without validating it.
    pub fn read(path: &Path) -> Result<ClusterSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| Error::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses spec YAML without validating it. An empty document gives the defaults.
    pub fn parse(text: &str) -> std::result::Result<ClusterSpec, String> {
        if text.trim().is_empty() || text.lines().all(|l| l.trim_start().starts_with('#')) {
            return Ok(ClusterSpec::default());
        }
        serde_saphyr::from_str::<ClusterSpec>(text).map_err(|e| {
            let message = e.to_string();
            let message = message
                .strip_prefix("error: ")
                .map(str::to_string)
                .unwrap_or(message);
            match hint::shape_hint(text) {
                Some(h) => format!("{h}\n{message}"),
                None => message,
            }
        })
    }

    /// Applies command-line overrides.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.name {
            self.name = v.clone();
        }
        if let Some(v) = &o.namespace {
            self.namespace = v.clone();
        }
        if let Some(v) = o.replicas {
            self.replicas = v;
        }
        if let Some(v) = o.storage {
            self.storage.mode = v;
        }
        if let Some(v) = &o.nfs_export {
            self.nfs.export = v.clone();
        }
        if let Some(v) = &o.nfs_server {
            self.nfs.server = Some(v.clone());
        }
        if let Some(v) = &o.postgres_image {
            self.postgres.image = v.clone();
        }
        if let Some(v) = &o.agent_image {
            self.agent.image = v.clone();
        }
        if let Some(v) = o.tolerate_control_plane {
            self.tolerate_control_plane = v;
        }
    }

    /// Checks every field; the first problem found is returned with the field and the fix.
    /// Only a check: [`ClusterSpec::validated`] gives the [`ValidSpec`] that commands take.
    pub fn validate(&self) -> Result<()> {
        validate::spec(self)
    }

    /// Validates the spec into a [`ValidSpec`]; the error is [`ClusterSpec::validate`]'s.
    pub fn validated(self) -> Result<ValidSpec> {
        ValidSpec::new(self)
    }

    /// The spec as YAML (for `pgset.yaml` examples and `--dry-run`).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    // ---- names derived from the spec: the one place they are spelled ----

    /// StatefulSet and headless Service name.
    pub fn statefulset_name(&self) -> &str {
        &self.name
    }
    /// Headless Service (the StatefulSet's `serviceName`).
    pub fn headless_service_name(&self) -> &str {
        &self.name
    }
    /// Service selecting the master.
    pub fn master_service_name(&self) -> String {
        format!("{}-master", self.name)
    }
    /// Service selecting the replicas.
    pub fn replica_service_name(&self) -> String {
        format!("{}-replica", self.name)
    }
    /// Secret with the passwords.
    pub fn secret_name(&self) -> String {
        format!("{}-secret", self.name)
    }
    /// ServiceAccount of the pods.
    pub fn service_account_name(&self) -> String {
        format!("{}-sa", self.name)
    }
    /// Role and RoleBinding of the ServiceAccount.
    pub fn role_name(&self) -> String {
        format!("{}-agent", self.name)
    }
    /// Secret holding the CA pgset made (`tls.mode: auto`): its certificate and key. Members
    /// never read it.
    pub fn ca_secret_name(&self) -> String {
        format!("{}-ca", self.name)
    }
    /// ConfigMap holding the CA's certificate alone (`ca.crt`), for clients that verify the
    /// server without reading a Secret (`tls.mode: auto`).
    pub fn ca_configmap_name(&self) -> String {
        format!("{}-ca-cert", self.name)
    }
    /// Secret holding the server certificate: the user's in `provided` mode, else
    /// `<name>-tls-server`.
    pub fn tls_server_secret_name(&self) -> String {
        match (&self.tls.mode, &self.tls.server_secret) {
            (TlsMode::Provided, Some(name)) => name.clone(),
            _ => format!("{}-tls-server", self.name),
        }
    }
    /// Secret holding the replication role's client certificate: the user's in `provided`
    /// mode, else `<name>-tls-replication`.
    pub fn tls_replication_secret_name(&self) -> String {
        match (&self.tls.mode, &self.tls.replication_secret) {
            (TlsMode::Provided, Some(name)) => name.clone(),
            _ => format!("{}-tls-replication", self.name),
        }
    }
    /// ConfigMap holding the cluster's record (its database system identifier), kept across
    /// `down` like the claims and the Secret.
    pub fn record_name(&self) -> String {
        format!("{}-record", self.name)
    }
    /// The shared claim (shared mode).
    pub fn shared_claim_name(&self) -> String {
        format!("{}-pvc", self.name)
    }
    /// Name of the volume claim template (templates mode) and of the data volume.
    pub fn data_volume_name(&self) -> &'static str {
        "data"
    }
    /// Claim of one member in templates mode: `data-<name>-<ordinal>`.
    pub fn member_claim_name(&self, ordinal: i32) -> String {
        format!("{}-{}", self.data_volume_name(), self.pod_name(ordinal))
    }
    /// Pod name of an ordinal.
    pub fn pod_name(&self, ordinal: i32) -> String {
        format!("{}-{}", self.name, ordinal)
    }
    /// The write-fence Lease of a member: `<name>-<ordinal>-member`.
    pub fn member_lease_name(&self, ordinal: i32) -> String {
        contract::member_lease_name(&self.pod_name(ordinal))
    }
    /// Stable DNS name of a member: `<pod>.<headless>.<ns>.svc.cluster.local`.
    pub fn pod_fqdn(&self, ordinal: i32) -> String {
        format!(
            "{}.{}.{}.svc.cluster.local",
            self.pod_name(ordinal),
            self.headless_service_name(),
            self.namespace
        )
    }
    /// StorageClass name of pgset's own NFS volumes, so a default StorageClass cannot take
    /// the claims.
    pub fn storage_class_name(&self) -> String {
        format!("{}-nfs", self.name)
    }
    // ---- placement: where a cluster's data lives on the NFS host and which volumes reach it ----
    //
    // Two clusters that differ in namespace or name never share a PersistentVolume, an export
    // directory or an `/etc/exports` block. The default cluster (namespace `default`, name
    // `pgset`) keeps the seed's layout; every other cluster lives under its own directory
    // `<export>/<namespace>.<name>` and has volumes named `<namespace>.<claim>`. Neither a
    // namespace nor a cluster name can contain '.', so these names are unambiguous by
    // construction, and none of them can equal a default cluster's name (which has no '.').

    /// Whether this is the default cluster (namespace `default`, name `pgset`), which keeps
    /// the seed's names and layout.
    pub fn is_default_cluster(&self) -> bool {
        self.namespace == DEFAULT_NAMESPACE && self.name == DEFAULT_NAME
    }
    /// `<namespace>.<name>`: one per cluster, since neither part can contain '.'.
    pub fn placement_key(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
    /// The directory on the NFS host that holds this cluster's data and that its exports
    /// block exports: the export itself for the default cluster (the seed's layout),
    /// `<export>/<namespace>.<name>` for every other cluster.
    pub fn cluster_export_dir(&self) -> PathBuf {
        if self.is_default_cluster() {
            self.nfs.export.clone()
        } else {
            self.nfs.export.join(self.placement_key())
        }
    }
    /// What identifies this cluster's block in `/etc/exports`: `<namespace>/<name>`.
    pub fn exports_block_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// Name of a PersistentVolume reserved for one claim of a cluster other than the default:
    /// `<namespace>.<claim>`.
    fn claim_pv_name(&self, claim: &str) -> String {
        format!("{}.{claim}", self.namespace)
    }
    /// Names of the shared-mode PersistentVolumes, all reserved (`claimRef`) for the shared
    /// claim: `pv1..pvN` (N = max(3, replicas)) as in the seed for the default cluster; one
    /// volume `<namespace>.<name>-pvc` for any other cluster.
    pub fn shared_pv_names(&self) -> Vec<String> {
        if self.is_default_cluster() {
            (1..=self.replicas.max(3))
                .map(|i| format!("pv{i}"))
                .collect()
        } else {
            vec![self.claim_pv_name(&self.shared_claim_name())]
        }
    }
    /// Name of the PersistentVolume pre-bound to a member's claim in templates mode:
    /// `pgset-default-N` for the default cluster (as before), `<namespace>.data-<name>-N` for
    /// any other cluster.
    pub fn member_pv_name(&self, ordinal: i32) -> String {
        if self.is_default_cluster() {
            format!("{}-{}-{}", self.name, self.namespace, ordinal)
        } else {
            self.claim_pv_name(&self.member_claim_name(ordinal))
        }
    }
    /// Directory of a member's data on the NFS host (both modes): `<cluster dir>/<pod-name>`,
    /// i.e. `/nfsfileshare/pgset-N` for the default cluster and
    /// `<export>/<namespace>.<name>/<name>-N` for any other.
    pub fn member_export_dir(&self, ordinal: i32) -> PathBuf {
        self.cluster_export_dir().join(self.pod_name(ordinal))
    }
    /// Labels every object carries.
    pub fn common_labels(&self) -> Vec<(&'static str, String)> {
        vec![
            (contract::labels::NAME, contract::APP_NAME.to_string()),
            (contract::labels::INSTANCE, self.name.clone()),
            (contract::labels::MANAGED_BY, contract::APP_NAME.to_string()),
        ]
    }
    /// Labels selecting this cluster's pods.
    pub fn selector_labels(&self) -> Vec<(&'static str, String)> {
        vec![
            (contract::labels::NAME, contract::APP_NAME.to_string()),
            (contract::labels::INSTANCE, self.name.clone()),
        ]
    }
}

/// The tag of an image reference, if it is one and has one (`repo:tag` or `repo:tag@digest`).
pub fn image_tag(image: &str) -> Option<&str> {
    image_ref::ImageReference::parse(image)?.tag
}

/// The physical replication slot of a member: the pod name with '-' → '_' (`pgset-1` → `pgset_1`).
pub fn slot_name(pod_name: &str) -> String {
    pod_name.replace('-', "_")
}

/// The member a slot belongs to, when the slot is one of this cluster's replica slots.
pub fn member_of_slot(cluster: &str, slot: &str) -> Option<String> {
    let prefix = format!("{}_", slot_name(cluster));
    let n = slot.strip_prefix(&prefix)?;
    let pod = format!("{cluster}-{n}");
    match ordinal_of(&pod) {
        Some(k) if k > 0 => Some(pod),
        _ => None,
    }
}

/// Parses the ordinal of a StatefulSet pod name: `pgset-12` → 12.
pub fn ordinal_of(pod_name: &str) -> Option<i32> {
    let (prefix, n) = pod_name.rsplit_once('-')?;
    if prefix.is_empty()
        || prefix.ends_with('-')
        || n.is_empty()
        || !n.bytes().all(|b| b.is_ascii_digit())
        || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests;
