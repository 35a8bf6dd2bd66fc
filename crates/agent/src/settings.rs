//! The agent's settings, read from the env contract (`pgset_spec::contract::env`) and checked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pgset_spec::contract::{self, env, modes, roles};

use crate::{Error, Result};

/// Default deadline for a replica waiting on its master.
pub const DEFAULT_MASTER_WAIT: Duration = Duration::from_secs(600);

/// What a member is, from its ordinal: 0 is the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ordinal 0: initdb, accepts writes, keeps slots for the replicas.
    Primary,
    /// Every other ordinal: base backup, streams from the master.
    Replica,
}

impl Role {
    /// The role of the member with this ordinal.
    pub fn of_ordinal(ordinal: i32) -> Role {
        if ordinal == 0 {
            Role::Primary
        } else {
            Role::Replica
        }
    }

    /// The value of the `role` label.
    pub fn label(self) -> &'static str {
        match self {
            Role::Primary => roles::MASTER,
            Role::Replica => roles::REPLICA,
        }
    }
}

/// Where the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In a pod: label the pod through the API.
    Kubernetes,
    /// A local process: no API; membership from a file.
    Local,
}

pub use pgset_spec::{member_of_slot, slot_name};

/// Everything the agent needs to know, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `kubernetes` or `local`.
    pub mode: Mode,
    /// This member's name, `<cluster>-<ordinal>`.
    pub pod_name: String,
    /// The ordinal parsed from the pod name.
    pub ordinal: i32,
    /// The role from the ordinal.
    pub role: Role,
    /// Cluster (StatefulSet) name.
    pub cluster: String,
    /// Namespace (Kubernetes mode).
    pub namespace: Option<String>,
    /// The pod's UID (Kubernetes mode, from the downward API): the holder identity of the
    /// member's Lease.
    pub pod_uid: Option<String>,
    /// Directory holding `<pod-name>`.
    pub data_root: PathBuf,
    /// Host of the master.
    pub master_host: String,
    /// Port of the master.
    pub master_port: u16,
    /// This member's port.
    pub port: u16,
    /// `listen_addresses`.
    pub listen_addresses: String,
    /// `unix_socket_directories`.
    pub socket_dir: PathBuf,
    /// Directory with the password files.
    pub secret_dir: PathBuf,
    /// Health endpoint address (`None` when set to `off`).
    pub health_addr: Option<SocketAddr>,
    /// Directory of the PostgreSQL binaries, when given.
    pub pg_bin_dir: Option<PathBuf>,
    /// Local mode: the membership file.
    pub members_file: Option<PathBuf>,
    /// How long a replica waits for its master.
    pub master_wait: Duration,
    /// `pg_basebackup --max-rate`, when given.
    pub basebackup_max_rate: Option<String>,
    /// Take a data directory without an identity file as this member's (explicit opt-in).
    pub adopt_unmarked: bool,
    /// Allow initialising anew over a cluster that had data (explicit opt-in).
    pub allow_reinit: bool,
    /// How long postgres may go without answering before liveness fails.
    pub liveness_timeout: Duration,
    /// Where a refusal or fatal error is written before the agent exits.
    pub termination_log: Option<PathBuf>,
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Settings> {
        Settings::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let get = |var: &'static str| -> Option<String> {
            lookup(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let required = |var: &'static str, example: &str| -> Result<String> {
            get(var).ok_or_else(|| Error::Env {
                var,
                problem: format!("missing; set it (e.g. {var}={example})"),
            })
        };
        let port = |var: &'static str, example: &str| -> Result<u16> {
            let v = required(var, example)?;
            v.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Error::Env {
                    var,
                    problem: format!("`{v}` is not a TCP port (1-65535)"),
                })
        };

        let mode = match get(env::MODE).as_deref() {
            None => {
                return Err(Error::Env {
                    var: env::MODE,
                    problem: format!(
                        "missing; set it to `{}` or `{}`",
                        modes::KUBERNETES,
                        modes::LOCAL
                    ),
                });
            }
            Some(m) if m == modes::KUBERNETES => Mode::Kubernetes,
            Some(m) if m == modes::LOCAL => Mode::Local,
            Some(other) => {
                return Err(Error::Env {
                    var: env::MODE,
                    problem: format!(
                        "`{other}` is not a mode; use `{}` or `{}`",
                        modes::KUBERNETES,
                        modes::LOCAL
                    ),
                });
            }
        };
        let cluster = required(env::CLUSTER, pgset_spec::DEFAULT_NAME)?;
        let pod_name = required(env::POD_NAME, "pgset-0")?;
        let ordinal = pgset_spec::ordinal_of(&pod_name).ok_or_else(|| Error::Env {
            var: env::POD_NAME,
            problem: format!(
                "`{pod_name}` does not end in a numeric ordinal; expected `<cluster>-<ordinal>` such as `{cluster}-0`"
            ),
        })?;
        if pod_name != format!("{cluster}-{ordinal}") {
            return Err(Error::Env {
                var: env::POD_NAME,
                problem: format!(
                    "`{pod_name}` is not a member of cluster `{cluster}` ({}); expected `{cluster}-{ordinal}`",
                    env::CLUSTER
                ),
            });
        }
        let namespace = get(env::NAMESPACE);
        if mode == Mode::Kubernetes && namespace.is_none() {
            return Err(Error::Env {
                var: env::NAMESPACE,
                problem: "missing; in a pod set it from the downward API (metadata.namespace)"
                    .into(),
            });
        }
        let data_root = PathBuf::from(required(env::DATA_ROOT, contract::DATA_MOUNT)?);
        let master_host = required(env::MASTER_HOST, "pgset-master")?;
        let master_port = port(env::MASTER_PORT, "5432")?;
        let member_port = port(env::PORT, "5432")?;
        let listen_addresses = get(env::LISTEN_ADDRESSES).unwrap_or_else(|| "*".to_string());
        let socket_dir =
            PathBuf::from(get(env::SOCKET_DIR).unwrap_or_else(|| contract::SOCKET_DIR.to_string()));
        let secret_dir = PathBuf::from(required(env::SECRET_DIR, contract::SECRET_MOUNT)?);
        let health_addr = match get(env::HEALTH_ADDR) {
            None => Some(SocketAddr::from(([0, 0, 0, 0], contract::HEALTH_PORT))),
            Some(v) if v == "off" => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| Error::Env {
                var: env::HEALTH_ADDR,
                problem: format!("`{v}` is not an IP:port address (e.g. 0.0.0.0:8008) or `off`"),
            })?),
        };
        let master_wait = match get(env::MASTER_WAIT_TIMEOUT) {
            None => DEFAULT_MASTER_WAIT,
            Some(v) => Duration::from_secs(v.parse::<u64>().map_err(|_| Error::Env {
                var: env::MASTER_WAIT_TIMEOUT,
                problem: format!("`{v}` is not a number of seconds"),
            })?),
        };
        let flag = |var: &'static str| -> Result<bool> {
            match get(var).as_deref() {
                None | Some("false") | Some("0") => Ok(false),
                Some("true") | Some("1") => Ok(true),
                Some(other) => Err(Error::Env {
                    var,
                    problem: format!("`{other}` is not `true` or `false`"),
                }),
            }
        };
        let adopt_unmarked = flag(env::ADOPT_UNMARKED)?;
        let allow_reinit = flag(env::ALLOW_REINIT)?;
        let liveness_timeout = match get(env::LIVENESS_TIMEOUT) {
            None => crate::health::DEFAULT_LIVENESS_TIMEOUT,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => Duration::from_secs(n),
                _ => {
                    return Err(Error::Env {
                        var: env::LIVENESS_TIMEOUT,
                        problem: format!("`{v}` is not a positive number of seconds"),
                    });
                }
            },
        };
        let termination_log = get(env::TERMINATION_LOG).map(PathBuf::from).or_else(|| {
            (mode == Mode::Kubernetes).then(|| PathBuf::from(contract::TERMINATION_LOG_PATH))
        });
        let basebackup_max_rate = get(env::BASEBACKUP_MAX_RATE);
        if let Some(rate) = &basebackup_max_rate {
            let digits = rate.trim_end_matches(['k', 'K', 'm', 'M']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::Env {
                    var: env::BASEBACKUP_MAX_RATE,
                    problem: format!("`{rate}` is not a rate like 32k or 50M"),
                });
            }
        }
        for (var, path) in [
            (env::DATA_ROOT, &data_root),
            (env::SECRET_DIR, &secret_dir),
            (env::SOCKET_DIR, &socket_dir),
        ] {
            if !path.is_absolute() {
                return Err(Error::Env {
                    var,
                    problem: format!("`{}` is not an absolute path", path.display()),
                });
            }
        }
        Ok(Settings {
            mode,
            role: Role::of_ordinal(ordinal),
            pod_name,
            ordinal,
            cluster,
            namespace,
            pod_uid: get(env::POD_UID),
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
            liveness_timeout,
            termination_log,
        })
    }

    /// PGDATA: `<data root>/<pod-name>`.
    pub fn pgdata(&self) -> PathBuf {
        self.data_root.join(&self.pod_name)
    }

    /// Where a first copy (initdb or base backup) is built before it is renamed into place.
    pub fn bootstrap_dir(&self) -> PathBuf {
        self.data_root.join(format!("{}.bootstrap", self.pod_name))
    }

    /// Where a member's data is kept aside when it is copied again (at most one such copy).
    pub fn previous_dir(&self) -> PathBuf {
        self.data_root.join(format!("{}.previous", self.pod_name))
    }

    /// This member's replication slot on the primary.
    pub fn slot(&self) -> String {
        slot_name(&self.pod_name)
    }

    /// The file that holds the replication password in libpq's passfile format.
    pub fn replication_passfile(&self) -> PathBuf {
        self.socket_dir.join(format!("{}.pgpass", self.pod_name))
    }

    /// The local-mode pid file of the agent.
    pub fn agent_pid_file(&self) -> PathBuf {
        agent_pid_file(&self.data_root, &self.pod_name)
    }

    /// A password file from the secret directory.
    pub fn secret_file(&self, key: &str) -> PathBuf {
        self.secret_dir.join(key)
    }
}

/// The local-mode pid file of a member's agent, `<data root>/<member>.agent.pid`.
pub fn agent_pid_file(data_root: &Path, member: &str) -> PathBuf {
    data_root.join(format!("{member}.agent.pid"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A valid member environment for `pod` (shared with the other modules' tests).
    pub(crate) fn sample_env(pod: &str) -> HashMap<&'static str, String> {
        HashMap::from([
            (env::MODE, "local".to_string()),
            (env::CLUSTER, "pgset".to_string()),
            (env::POD_NAME, pod.to_string()),
            (env::DATA_ROOT, "/data".to_string()),
            (env::MASTER_HOST, "pgset-master".to_string()),
            (env::MASTER_PORT, "5432".to_string()),
            (env::PORT, "5433".to_string()),
            (env::SOCKET_DIR, "/run/pg".to_string()),
            (env::SECRET_DIR, "/secret".to_string()),
        ])
    }

    fn base() -> HashMap<&'static str, String> {
        sample_env("pgset-1")
    }

    fn parse(m: &HashMap<&'static str, String>) -> Result<Settings> {
        Settings::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn role_slot_and_paths_follow_the_pod_name() {
        let s = parse(&base()).unwrap();
        assert_eq!(s.role, Role::Replica);
        assert_eq!(s.ordinal, 1);
        assert_eq!(s.slot(), "pgset_1");
        assert_eq!(s.pgdata(), PathBuf::from("/data/pgset-1"));
        assert_eq!(s.bootstrap_dir(), PathBuf::from("/data/pgset-1.bootstrap"));
        assert_eq!(s.health_addr, Some("0.0.0.0:8008".parse().unwrap()));
        assert_eq!(s.master_wait, DEFAULT_MASTER_WAIT);
        let mut m = base();
        m.insert(env::POD_NAME, "pgset-0".into());
        assert_eq!(parse(&m).unwrap().role, Role::Primary);
        assert_eq!(Role::Primary.label(), "master");
    }

    #[test]
    fn slots_map_back_to_members_of_this_cluster_only() {
        assert_eq!(
            member_of_slot("my-db", "my_db_3").as_deref(),
            Some("my-db-3")
        );
        assert_eq!(member_of_slot("my-db", "my_db_0"), None);
        assert_eq!(member_of_slot("my-db", "other_3"), None);
        assert_eq!(member_of_slot("my-db", "my_db_x"), None);
        assert_eq!(member_of_slot("my-db", "my_db_03"), None);
    }

    #[test]
    fn bad_input_names_the_variable() {
        let mut m = base();
        m.remove(env::POD_NAME);
        let e = parse(&m).unwrap_err().to_string();
        assert!(e.contains("PGSET_POD_NAME") && e.contains("missing"), "{e}");

        let mut m = base();
        m.insert(env::POD_NAME, "pgset-x".into());
        let e = parse(&m).unwrap_err().to_string();
        assert!(
            e.contains("PGSET_POD_NAME") && e.contains("numeric ordinal"),
            "{e}"
        );

        let mut m = base();
        m.insert(env::POD_NAME, "other-1".into());
        assert!(
            parse(&m)
                .unwrap_err()
                .to_string()
                .contains("not a member of cluster")
        );

        let mut m = base();
        m.insert(env::PORT, "99999".into());
        assert!(parse(&m).unwrap_err().to_string().contains("PGSET_PORT"));

        let mut m = base();
        m.insert(env::MODE, "docker".into());
        assert!(parse(&m).unwrap_err().to_string().contains("PGSET_MODE"));

        let mut m = base();
        m.insert(env::MODE, "kubernetes".into());
        assert!(
            parse(&m)
                .unwrap_err()
                .to_string()
                .contains("PGSET_NAMESPACE")
        );

        let mut m = base();
        m.insert(env::DATA_ROOT, "relative".into());
        assert!(parse(&m).unwrap_err().to_string().contains("absolute"));

        let mut m = base();
        m.insert(env::BASEBACKUP_MAX_RATE, "fast".into());
        assert!(
            parse(&m)
                .unwrap_err()
                .to_string()
                .contains("PGSET_BASEBACKUP_MAX_RATE")
        );

        let mut m = base();
        m.insert(env::ALLOW_REINIT, "yes".into());
        assert!(
            parse(&m)
                .unwrap_err()
                .to_string()
                .contains("PGSET_ALLOW_REINIT")
        );

        let mut m = base();
        m.insert(env::LIVENESS_TIMEOUT, "0".into());
        assert!(
            parse(&m)
                .unwrap_err()
                .to_string()
                .contains("PGSET_LIVENESS_TIMEOUT")
        );

        let mut m = base();
        m.insert(env::HEALTH_ADDR, "off".into());
        assert_eq!(parse(&m).unwrap().health_addr, None);
    }
}
