//! The env contract as one typed value: what deploy writes into the pod, what local mode gives
//! each member process, and what the agent reads back, with one parser and one writer.
//!
//! [`AgentEnv::entries`] names every variable with where its value comes from (a value, or a
//! field of the pod's own metadata through the downward API); deploy turns the entries into the
//! container's `env:` and local mode into a process environment. No password is ever an entry:
//! the agent reads them from the files under [`env::SECRET_DIR`].
//! [`AgentEnv::from_lookup`] is the agent's parser; its error names the variable and the fix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Cidr;

use super::{DATA_MOUNT, HEALTH_PORT, SECRET_MOUNT, SOCKET_DIR, TERMINATION_LOG_PATH, env, modes};

/// Value of a flag variable that is on (the only value the writer uses).
pub const FLAG_ON: &str = "true";
/// Value of [`env::HEALTH_ADDR`] that turns the health endpoint off.
pub const HEALTH_OFF: &str = "off";
/// [`env::LISTEN_ADDRESSES`] when unset: every address (as in a pod).
pub const DEFAULT_LISTEN_ADDRESSES: &str = "*";

/// Where the agent runs ([`env::MODE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// In a pod: the agent labels its pod and reads membership through the API.
    Kubernetes,
    /// A local process (tests, demos): no API; membership from [`env::MEMBERS_FILE`].
    Local,
}

impl AgentMode {
    /// The value of [`env::MODE`].
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Kubernetes => modes::KUBERNETES,
            AgentMode::Local => modes::LOCAL,
        }
    }
}

/// Who the member is: [`env::POD_NAME`], [`env::NAMESPACE`] and [`env::POD_UID`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberIdentity {
    /// In a pod: all three come from the pod's own metadata (the downward API), so one
    /// StatefulSet template serves every member.
    FromPod,
    /// Given as values: local mode, and what the agent reads.
    Given {
        /// The member's name, `<cluster>-<ordinal>`.
        pod_name: String,
        /// Its namespace (required in Kubernetes mode).
        namespace: Option<String>,
        /// Its pod's UID (Kubernetes mode: the holder identity of the member's Lease).
        pod_uid: Option<String>,
    },
}

/// The downward-API field paths of [`MemberIdentity::FromPod`].
pub mod pod_fields {
    /// The pod's name.
    pub const NAME: &str = "metadata.name";
    /// The pod's namespace.
    pub const NAMESPACE: &str = "metadata.namespace";
    /// The pod's UID.
    pub const UID: &str = "metadata.uid";
}

/// Where one variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// A literal value.
    Value(String),
    /// A field of the pod's own metadata (downward API `fieldRef`, API version v1), e.g.
    /// [`pod_fields::NAME`]. Only a pod can fill it.
    PodField(&'static str),
}

/// One variable of the contract and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvEntry {
    /// The variable, one of [`env`]'s constants.
    pub name: &'static str,
    /// Its value or where the pod takes it from.
    pub source: EnvSource,
}

/// A contract variable that is missing or malformed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {var}: {problem}")]
pub struct EnvError {
    /// The variable.
    pub var: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

/// Everything the agent is told through its environment, typed. Optional settings are `None`
/// when the variable is absent (the agent then uses its default), so a value written out and
/// read back is the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEnv {
    /// [`env::MODE`].
    pub mode: AgentMode,
    /// [`env::POD_NAME`], [`env::NAMESPACE`], [`env::POD_UID`].
    pub member: MemberIdentity,
    /// [`env::CLUSTER`]: the cluster (StatefulSet) name.
    pub cluster: String,
    /// [`env::DATA_ROOT`]: the directory holding `<pod-name>` (absolute).
    pub data_root: PathBuf,
    /// [`env::MASTER_HOST`]: the host replicas stream from.
    pub master_host: String,
    /// [`env::MASTER_PORT`].
    pub master_port: u16,
    /// [`env::PORT`]: this member's postgres port.
    pub port: u16,
    /// [`env::LISTEN_ADDRESSES`] (default [`DEFAULT_LISTEN_ADDRESSES`]).
    pub listen_addresses: String,
    /// [`env::SOCKET_DIR`] (absolute; default [`SOCKET_DIR`](super::SOCKET_DIR)).
    pub socket_dir: PathBuf,
    /// [`env::SECRET_DIR`]: the directory of the password files (absolute).
    pub secret_dir: PathBuf,
    /// [`env::HEALTH_ADDR`]: `None` is [`HEALTH_OFF`] (default `0.0.0.0:<HEALTH_PORT>`).
    pub health_addr: Option<SocketAddr>,
    /// [`env::PG_BIN_DIR`].
    pub pg_bin_dir: Option<PathBuf>,
    /// [`env::MEMBERS_FILE`] (local mode's membership).
    pub members_file: Option<PathBuf>,
    /// [`env::MASTER_WAIT_TIMEOUT`], whole seconds.
    pub master_wait: Option<Duration>,
    /// [`env::BASEBACKUP_MAX_RATE`], e.g. `50M`.
    pub basebackup_max_rate: Option<String>,
    /// [`env::ADOPT_UNMARKED`]: written only when on.
    pub adopt_unmarked: bool,
    /// [`env::ALLOW_REINIT`]: written only when on.
    pub allow_reinit: bool,
    /// [`env::TERMINATION_LOG`] (see [`AgentEnv::termination_log_or_default`]).
    pub termination_log: Option<PathBuf>,
    /// [`env::LIVENESS_TIMEOUT`], whole seconds, at least one.
    pub liveness_timeout: Option<Duration>,
    /// [`env::MAX_REPLICA_LAG_BYTES`].
    pub max_replica_lag_bytes: Option<u64>,
    /// [`env::MAX_REPLICA_LAG_SECONDS`], whole seconds.
    pub max_replica_lag: Option<Duration>,
    /// [`env::FAILOVER`]: `Some(false)` turns automatic failover off (written only then).
    pub failover: Option<bool>,
    /// [`env::MAXIMUM_LAG_ON_FAILOVER`].
    pub maximum_lag_on_failover: Option<u64>,
    /// [`env::SYNCHRONOUS`]: written only when synchronous replication is on.
    pub synchronous: Option<crate::Synchronous>,
    /// [`env::TLS_DIR`]: an absolute directory; unset, no TLS.
    pub tls_dir: Option<PathBuf>,
    /// [`env::SUPERUSER_FROM`]: `None` (unset) is the loopback only; `Some(empty)` is written
    /// `none`: the superuser only on the local socket.
    pub superuser_from: Option<Vec<Cidr>>,
    /// [`env::REPLICATION_FROM`]: `None` (unset) admits replication from any address (still
    /// only by the replication certificate).
    pub replication_from: Option<Vec<Cidr>>,
}

/// How [`env::SUPERUSER_FROM`] writes an empty list.
pub const NO_NETWORK: &str = "none";

fn networks_text(networks: &[Cidr]) -> String {
    if networks.is_empty() {
        return NO_NETWORK.to_string();
    }
    networks
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a list [`networks_text`] wrote.
fn parse_networks(text: &str) -> Result<Vec<Cidr>, String> {
    if text.trim() == NO_NETWORK {
        return Ok(Vec::new());
    }
    text.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.parse::<Cidr>().map_err(|e| e.to_string()))
        .collect()
}

/// The health endpoint's address when [`env::HEALTH_ADDR`] is unset.
pub fn default_health_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], HEALTH_PORT))
}

fn value(name: &'static str, v: impl Into<String>) -> EnvEntry {
    EnvEntry {
        name,
        source: EnvSource::Value(v.into()),
    }
}

fn field(name: &'static str, path: &'static str) -> EnvEntry {
    EnvEntry {
        name,
        source: EnvSource::PodField(path),
    }
}

fn path_str(p: &std::path::Path) -> String {
    p.display().to_string()
}

impl AgentEnv {
    /// The member's name, when given as a value.
    pub fn pod_name(&self) -> Option<&str> {
        match &self.member {
            MemberIdentity::FromPod => None,
            MemberIdentity::Given { pod_name, .. } => Some(pod_name),
        }
    }

    /// Where a refusal or fatal error is written: [`env::TERMINATION_LOG`], else the
    /// container's termination-message path in a pod, else nowhere.
    pub fn termination_log_or_default(&self) -> Option<PathBuf> {
        termination_log_or_default(self.termination_log.clone(), self.mode)
    }

    /// The variables in the order they are written, each with its value or source. An
    /// optional setting that is `None` and a flag that is off are not written.
    pub fn entries(&self) -> Vec<EnvEntry> {
        let mut v = vec![value(env::MODE, self.mode.as_str())];
        match &self.member {
            MemberIdentity::FromPod => v.extend([
                field(env::POD_NAME, pod_fields::NAME),
                field(env::NAMESPACE, pod_fields::NAMESPACE),
                field(env::POD_UID, pod_fields::UID),
            ]),
            MemberIdentity::Given {
                pod_name,
                namespace,
                pod_uid,
            } => {
                v.push(value(env::POD_NAME, pod_name.clone()));
                v.extend(namespace.clone().map(|n| value(env::NAMESPACE, n)));
                v.extend(pod_uid.clone().map(|u| value(env::POD_UID, u)));
            }
        }
        v.extend([
            value(env::CLUSTER, self.cluster.clone()),
            value(env::DATA_ROOT, path_str(&self.data_root)),
            value(env::MASTER_HOST, self.master_host.clone()),
            value(env::MASTER_PORT, self.master_port.to_string()),
            value(env::PORT, self.port.to_string()),
            value(env::LISTEN_ADDRESSES, self.listen_addresses.clone()),
            value(env::SOCKET_DIR, path_str(&self.socket_dir)),
            value(env::SECRET_DIR, path_str(&self.secret_dir)),
            value(
                env::HEALTH_ADDR,
                self.health_addr
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| HEALTH_OFF.to_string()),
            ),
        ]);
        let optional = [
            (env::PG_BIN_DIR, self.pg_bin_dir.as_deref().map(path_str)),
            (
                env::MEMBERS_FILE,
                self.members_file.as_deref().map(path_str),
            ),
            (
                env::MASTER_WAIT_TIMEOUT,
                self.master_wait.map(|d| d.as_secs().to_string()),
            ),
            (env::BASEBACKUP_MAX_RATE, self.basebackup_max_rate.clone()),
            // The opt-ins appear only when given, so a default renders no switch to flip by
            // mistake.
            (
                env::ADOPT_UNMARKED,
                self.adopt_unmarked.then(|| FLAG_ON.to_string()),
            ),
            (
                env::ALLOW_REINIT,
                self.allow_reinit.then(|| FLAG_ON.to_string()),
            ),
            (
                env::LIVENESS_TIMEOUT,
                self.liveness_timeout
                    .map(|d| d.as_secs().max(1).to_string()),
            ),
            (
                env::TERMINATION_LOG,
                self.termination_log.as_deref().map(path_str),
            ),
            (
                env::MAX_REPLICA_LAG_BYTES,
                self.max_replica_lag_bytes.map(|b| b.to_string()),
            ),
            (
                env::MAX_REPLICA_LAG_SECONDS,
                self.max_replica_lag.map(|d| d.as_secs().to_string()),
            ),
            (
                env::FAILOVER,
                self.failover
                    .map(|on| if on { FLAG_ON } else { "false" }.to_string()),
            ),
            (
                env::MAXIMUM_LAG_ON_FAILOVER,
                self.maximum_lag_on_failover.map(|b| b.to_string()),
            ),
            (env::SYNCHRONOUS, self.synchronous.map(|s| s.to_env())),
            (
                env::TLS_DIR,
                self.tls_dir.as_ref().map(|d| d.display().to_string()),
            ),
            (
                env::SUPERUSER_FROM,
                self.superuser_from.as_deref().map(networks_text),
            ),
            (
                env::REPLICATION_FROM,
                self.replication_from.as_deref().map(networks_text),
            ),
        ];
        v.extend(
            optional
                .into_iter()
                .filter_map(|(name, val)| val.map(|val| value(name, val))),
        );
        v
    }

    /// The entries as `(name, value)` pairs for a process environment. Refused, naming the
    /// variable, when one comes from a pod's metadata ([`MemberIdentity::FromPod`]).
    pub fn literal_entries(&self) -> Result<Vec<(&'static str, String)>, EnvError> {
        self.entries()
            .into_iter()
            .map(|e| match e.source {
                EnvSource::Value(v) => Ok((e.name, v)),
                EnvSource::PodField(path) => Err(EnvError {
                    var: e.name,
                    problem: format!(
                        "comes from the pod's `{path}` (downward API); outside a pod give the member's name, namespace and UID as values"
                    ),
                }),
            })
            .collect()
    }

    /// Reads the contract from the process environment.
    pub fn from_env() -> Result<AgentEnv, EnvError> {
        AgentEnv::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads and checks the contract through `lookup` (the environment, or a map in tests).
    /// Values are trimmed; an empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<AgentEnv, EnvError> {
        let get = |var: &'static str| -> Option<String> {
            lookup(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let err = |var: &'static str, problem: String| EnvError { var, problem };
        let required = |var: &'static str, example: &str| -> Result<String, EnvError> {
            get(var).ok_or_else(|| err(var, format!("missing; set it (e.g. {var}={example})")))
        };
        let port = |var: &'static str, example: &str| -> Result<u16, EnvError> {
            let v = required(var, example)?;
            v.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| err(var, format!("`{v}` is not a TCP port (1-65535)")))
        };
        let seconds =
            |var: &'static str, min: u64, what: &str| -> Result<Option<Duration>, EnvError> {
                get(var)
                    .map(|v| match v.parse::<u64>() {
                        Ok(n) if n >= min => Ok(Duration::from_secs(n)),
                        _ => Err(err(var, format!("`{v}` is not {what}"))),
                    })
                    .transpose()
            };
        let flag = |var: &'static str| -> Result<bool, EnvError> {
            match get(var).as_deref() {
                None | Some("false") | Some("0") => Ok(false),
                Some("true") | Some("1") => Ok(true),
                Some(other) => Err(err(var, format!("`{other}` is not `true` or `false`"))),
            }
        };

        let mode = match get(env::MODE).as_deref() {
            None => {
                return Err(err(
                    env::MODE,
                    format!(
                        "missing; set it to `{}` or `{}`",
                        modes::KUBERNETES,
                        modes::LOCAL
                    ),
                ));
            }
            Some(m) if m == modes::KUBERNETES => AgentMode::Kubernetes,
            Some(m) if m == modes::LOCAL => AgentMode::Local,
            Some(other) => {
                return Err(err(
                    env::MODE,
                    format!(
                        "`{other}` is not a mode; use `{}` or `{}`",
                        modes::KUBERNETES,
                        modes::LOCAL
                    ),
                ));
            }
        };
        let cluster = required(env::CLUSTER, crate::DEFAULT_NAME)?;
        let pod_name = required(env::POD_NAME, "pgset-0")?;
        let ordinal = crate::ordinal_of(&pod_name).ok_or_else(|| {
            err(
                env::POD_NAME,
                format!(
                    "`{pod_name}` does not end in a numeric ordinal; expected `<cluster>-<ordinal>` such as `{cluster}-0`"
                ),
            )
        })?;
        if pod_name != format!("{cluster}-{ordinal}") {
            return Err(err(
                env::POD_NAME,
                format!(
                    "`{pod_name}` is not a member of cluster `{cluster}` ({}); expected `{cluster}-{ordinal}`",
                    env::CLUSTER
                ),
            ));
        }
        let namespace = get(env::NAMESPACE);
        if mode == AgentMode::Kubernetes && namespace.is_none() {
            return Err(err(
                env::NAMESPACE,
                format!(
                    "missing; in a pod set it from the downward API ({})",
                    pod_fields::NAMESPACE
                ),
            ));
        }
        let data_root = PathBuf::from(required(env::DATA_ROOT, DATA_MOUNT)?);
        let master_host = required(env::MASTER_HOST, "pgset-master")?;
        let master_port = port(env::MASTER_PORT, "5432")?;
        let member_port = port(env::PORT, "5432")?;
        let listen_addresses =
            get(env::LISTEN_ADDRESSES).unwrap_or_else(|| DEFAULT_LISTEN_ADDRESSES.to_string());
        let socket_dir = PathBuf::from(get(env::SOCKET_DIR).unwrap_or_else(|| SOCKET_DIR.into()));
        let secret_dir = PathBuf::from(required(env::SECRET_DIR, SECRET_MOUNT)?);
        let health_addr = match get(env::HEALTH_ADDR) {
            None => Some(default_health_addr()),
            Some(v) if v == HEALTH_OFF => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                err(
                    env::HEALTH_ADDR,
                    format!(
                        "`{v}` is not an IP:port address (e.g. 0.0.0.0:{HEALTH_PORT}) or `{HEALTH_OFF}`"
                    ),
                )
            })?),
        };
        let master_wait = seconds(env::MASTER_WAIT_TIMEOUT, 0, "a number of seconds")?;
        let liveness_timeout = seconds(env::LIVENESS_TIMEOUT, 1, "a positive number of seconds")?;
        let adopt_unmarked = flag(env::ADOPT_UNMARKED)?;
        let allow_reinit = flag(env::ALLOW_REINIT)?;
        let max_replica_lag = seconds(env::MAX_REPLICA_LAG_SECONDS, 0, "a number of seconds")?;
        let max_replica_lag_bytes = match get(env::MAX_REPLICA_LAG_BYTES) {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                err(
                    env::MAX_REPLICA_LAG_BYTES,
                    format!("`{v}` is not a number of bytes"),
                )
            })?),
        };
        let failover = match get(env::FAILOVER) {
            None => None,
            Some(_) => Some(flag(env::FAILOVER)?),
        };
        let maximum_lag_on_failover = match get(env::MAXIMUM_LAG_ON_FAILOVER) {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                err(
                    env::MAXIMUM_LAG_ON_FAILOVER,
                    format!("`{v}` is not a number of bytes"),
                )
            })?),
        };
        let synchronous = match get(env::SYNCHRONOUS) {
            None => None,
            Some(v) => Some(crate::Synchronous::from_env(&v).ok_or_else(|| {
                err(
                    env::SYNCHRONOUS,
                    format!("`{v}` is not `required:N` or `preferred:N` with N at least 1"),
                )
            })?),
        };
        let tls_dir = get(env::TLS_DIR).map(PathBuf::from);
        if let Some(dir) = &tls_dir
            && !dir.is_absolute()
        {
            return Err(err(
                env::TLS_DIR,
                format!("`{}` is not an absolute path", dir.display()),
            ));
        }
        let networks = |var: &'static str| -> Result<Option<Vec<Cidr>>, EnvError> {
            get(var)
                .map(|v| {
                    parse_networks(&v).map_err(|problem| {
                        err(
                            var,
                            format!(
                                "{problem} (a comma-separated list of networks, or `{NO_NETWORK}`)"
                            ),
                        )
                    })
                })
                .transpose()
        };
        let superuser_from = networks(env::SUPERUSER_FROM)?;
        let replication_from = networks(env::REPLICATION_FROM)?;
        let basebackup_max_rate = get(env::BASEBACKUP_MAX_RATE);
        if let Some(rate) = &basebackup_max_rate {
            let digits = rate.trim_end_matches(['k', 'K', 'm', 'M']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(
                    env::BASEBACKUP_MAX_RATE,
                    format!("`{rate}` is not a rate like 32k or 50M"),
                ));
            }
        }
        for (var, path) in [
            (env::DATA_ROOT, &data_root),
            (env::SECRET_DIR, &secret_dir),
            (env::SOCKET_DIR, &socket_dir),
        ] {
            if !path.is_absolute() {
                return Err(err(
                    var,
                    format!("`{}` is not an absolute path", path.display()),
                ));
            }
        }
        Ok(AgentEnv {
            mode,
            member: MemberIdentity::Given {
                pod_name,
                namespace,
                pod_uid: get(env::POD_UID),
            },
            cluster,
            data_root,
            master_host,
            master_port,
            port: member_port,
            listen_addresses,
            socket_dir,
            secret_dir,
            health_addr,
            pg_bin_dir: get(env::PG_BIN_DIR).map(PathBuf::from),
            members_file: get(env::MEMBERS_FILE).map(PathBuf::from),
            master_wait,
            basebackup_max_rate,
            adopt_unmarked,
            allow_reinit,
            termination_log: get(env::TERMINATION_LOG).map(PathBuf::from),
            liveness_timeout,
            max_replica_lag_bytes,
            max_replica_lag,
            failover,
            maximum_lag_on_failover,
            synchronous,
            tls_dir,
            superuser_from,
            replication_from,
        })
    }
}

/// Where a refusal or fatal error is written, read through `lookup` alone: usable when the
/// rest of the contract is unreadable (that is often the error to write).
pub fn termination_log_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let get = |k: &str| {
        lookup(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mode = match get(env::MODE).as_deref() {
        Some(m) if m == modes::KUBERNETES => AgentMode::Kubernetes,
        _ => AgentMode::Local,
    };
    termination_log_or_default(get(env::TERMINATION_LOG).map(PathBuf::from), mode)
}

fn termination_log_or_default(given: Option<PathBuf>, mode: AgentMode) -> Option<PathBuf> {
    given.or_else(|| (mode == AgentMode::Kubernetes).then(|| PathBuf::from(TERMINATION_LOG_PATH)))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    /// A member's contract with every optional variable given.
    fn full() -> AgentEnv {
        AgentEnv {
            mode: AgentMode::Kubernetes,
            member: MemberIdentity::Given {
                pod_name: "db-2".into(),
                namespace: Some("prod".into()),
                pod_uid: Some("0f6c1d2e-uid".into()),
            },
            cluster: "db".into(),
            data_root: "/pgdata".into(),
            master_host: "db-master".into(),
            master_port: 5432,
            port: 5433,
            listen_addresses: "127.0.0.1".into(),
            socket_dir: "/run/pg".into(),
            secret_dir: "/etc/pgset/secret".into(),
            health_addr: Some("127.0.0.1:6433".parse().unwrap()),
            pg_bin_dir: Some("/usr/lib/postgresql/18/bin".into()),
            members_file: Some("/sets/a/members".into()),
            master_wait: Some(Duration::from_secs(90)),
            basebackup_max_rate: Some("50M".into()),
            adopt_unmarked: true,
            allow_reinit: true,
            termination_log: Some("/sets/a/db-2.termination-log".into()),
            liveness_timeout: Some(Duration::from_secs(45)),
            max_replica_lag_bytes: Some(8 * 1024 * 1024),
            max_replica_lag: Some(Duration::from_secs(20)),
            failover: Some(false),
            maximum_lag_on_failover: Some(2 * 1024 * 1024),
            synchronous: Some(crate::Synchronous {
                number: 2,
                durability: crate::Durability::Preferred,
            }),
            tls_dir: Some("/sets/a/tls".into()),
            superuser_from: Some(Vec::new()),
            replication_from: Some(vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ]),
        }
    }

    /// The same member with nothing optional: defaults where the parser has them.
    fn minimal() -> AgentEnv {
        AgentEnv {
            mode: AgentMode::Local,
            member: MemberIdentity::Given {
                pod_name: "db-0".into(),
                namespace: None,
                pod_uid: None,
            },
            listen_addresses: DEFAULT_LISTEN_ADDRESSES.into(),
            socket_dir: SOCKET_DIR.into(),
            health_addr: None,
            pg_bin_dir: None,
            members_file: None,
            master_wait: None,
            basebackup_max_rate: None,
            adopt_unmarked: false,
            allow_reinit: false,
            termination_log: None,
            liveness_timeout: None,
            max_replica_lag_bytes: None,
            max_replica_lag: None,
            failover: None,
            maximum_lag_on_failover: None,
            synchronous: None,
            tls_dir: None,
            superuser_from: None,
            replication_from: None,
            ..full()
        }
    }

    fn round_trip(value: &AgentEnv) -> AgentEnv {
        let vars: HashMap<&str, String> = value.literal_entries().unwrap().into_iter().collect();
        AgentEnv::from_lookup(|k| vars.get(k).cloned()).unwrap()
    }

    #[test]
    fn a_value_written_as_literal_env_reads_back_as_the_same_value() {
        for value in [full(), minimal()] {
            assert_eq!(round_trip(&value), value);
        }
    }

    #[test]
    fn a_full_value_writes_every_variable_of_the_contract_once() {
        let names: Vec<&str> = full().entries().iter().map(|e| e.name).collect();
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(
            unique.len(),
            names.len(),
            "a variable written twice: {names:?}"
        );
        assert_eq!(unique, env::ALL.iter().copied().collect::<BTreeSet<_>>());
    }

    #[test]
    fn off_switches_and_unset_options_are_not_written() {
        let names: Vec<&str> = minimal().entries().iter().map(|e| e.name).collect();
        for absent in [
            env::NAMESPACE,
            env::POD_UID,
            env::ADOPT_UNMARKED,
            env::ALLOW_REINIT,
            env::MASTER_WAIT_TIMEOUT,
            env::TERMINATION_LOG,
        ] {
            assert!(!names.contains(&absent), "{absent} in {names:?}");
        }
        let health = minimal()
            .entries()
            .into_iter()
            .find(|e| e.name == env::HEALTH_ADDR)
            .unwrap();
        assert_eq!(health.source, EnvSource::Value(HEALTH_OFF.into()));
    }

    #[test]
    fn a_pod_identity_comes_from_the_downward_api_and_has_no_literal_form() {
        let pod = AgentEnv {
            member: MemberIdentity::FromPod,
            ..full()
        };
        let fields: Vec<(&str, EnvSource)> = pod
            .entries()
            .into_iter()
            .filter(|e| matches!(e.source, EnvSource::PodField(_)))
            .map(|e| (e.name, e.source))
            .collect();
        assert_eq!(
            fields,
            [
                (env::POD_NAME, EnvSource::PodField(pod_fields::NAME)),
                (env::NAMESPACE, EnvSource::PodField(pod_fields::NAMESPACE)),
                (env::POD_UID, EnvSource::PodField(pod_fields::UID)),
            ]
        );
        let e = pod.literal_entries().unwrap_err();
        assert_eq!(e.var, env::POD_NAME);
        assert!(e.to_string().contains("metadata.name"), "{e}");
    }

    #[test]
    fn a_bad_variable_is_named_with_the_fix() {
        let good: HashMap<&str, String> = full().literal_entries().unwrap().into_iter().collect();
        let parse_with = |var: &'static str, v: Option<&str>| {
            let mut m = good.clone();
            match v {
                Some(v) => m.insert(var, v.to_string()),
                None => m.remove(var),
            };
            AgentEnv::from_lookup(|k| m.get(k).cloned()).unwrap_err()
        };
        let cases: [(&str, Option<&str>, &str); 12] = [
            (
                env::MODE,
                None,
                "missing; set it to `kubernetes` or `local`",
            ),
            (env::MODE, Some("docker"), "not a mode"),
            (env::POD_NAME, Some("db-x"), "numeric ordinal"),
            (
                env::POD_NAME,
                Some("other-1"),
                "not a member of cluster `db`",
            ),
            (env::NAMESPACE, None, "downward API"),
            (env::PORT, Some("99999"), "not a TCP port"),
            (env::SECRET_DIR, Some("relative"), "not an absolute path"),
            (env::TLS_DIR, Some("tls"), "not an absolute path"),
            (
                env::LIVENESS_TIMEOUT,
                Some("0"),
                "positive number of seconds",
            ),
            (env::ALLOW_REINIT, Some("yes"), "not `true` or `false`"),
            (
                env::REPLICATION_FROM,
                Some("10.244.0.0/16,pods"),
                "`pods` is not a network",
            ),
            (
                env::SUPERUSER_FROM,
                Some("10.0.0.1/8"),
                "write `10.0.0.0/8`",
            ),
        ];
        for (var, value, says) in cases {
            let e = parse_with(var, value);
            assert_eq!(e.var, var, "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("environment variable {var}: ")) && text.contains(says),
                "{text}"
            );
        }
    }

    #[test]
    fn the_termination_log_defaults_to_the_pods_only_in_kubernetes_mode() {
        let lookup = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            termination_log_from_lookup(lookup(&[(env::MODE, "kubernetes")])),
            Some(PathBuf::from(TERMINATION_LOG_PATH))
        );
        assert_eq!(
            termination_log_from_lookup(lookup(&[(env::MODE, "local")])),
            None
        );
        assert_eq!(
            termination_log_from_lookup(lookup(&[
                (env::MODE, "local"),
                (env::TERMINATION_LOG, "/x/t")
            ])),
            Some(PathBuf::from("/x/t"))
        );
        assert_eq!(
            minimal().termination_log_or_default(),
            None,
            "local mode without a file writes none"
        );
        assert_eq!(
            full().termination_log_or_default(),
            Some(PathBuf::from("/sets/a/db-2.termination-log"))
        );
    }
}
