//! The agent's settings: the env contract (`pgset_spec::contract::AgentEnv`) as parsed and checked,
//! and what the agent derives from it (member name, ordinal, role, defaults).

use std::path::PathBuf;
use std::time::Duration;

use pgset_spec::contract::{self, AgentEnv, MemberIdentity, roles};

use crate::{Error, Result};

/// Default deadline for a replica waiting on its master.
pub const DEFAULT_MASTER_WAIT: Duration = Duration::from_secs(600);

/// The leader record's lease duration: the role's timings are in proportion to it
/// ([`crate::leader::LeaderTimings::for_lease`]). A frozen master's writes come back about one
/// lease after it stopped renewing (plus a promotion), so 13 s keeps that within 15 s while the
/// holder still gets three renewal attempts and a 5 s stop before the 2 s margin.
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(13);

/// What a member is: the holder of the leader record is the master ([`crate::role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ordinal 0: initdb, accepts writes, keeps slots for the replicas.
    Master,
    /// Every other ordinal: base backup, streams from the master.
    Replica,
}

impl Role {
    /// The role of the member with this ordinal.
    pub fn of_ordinal(ordinal: i32) -> Role {
        if ordinal == 0 {
            Role::Master
        } else {
            Role::Replica
        }
    }

    /// The value of the `role` label.
    pub fn label(self) -> &'static str {
        match self {
            Role::Master => roles::MASTER,
            Role::Replica => roles::REPLICA,
        }
    }
}

pub(crate) use pgset_spec::{member_of_slot, slot_name};

/// Everything the agent needs to know: the env contract as given, and what the agent derives
/// from it (the member's name as a value, its ordinal and role, the defaults of what the
/// contract leaves out).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The env contract, parsed and checked (optional settings are `None` when not given).
    pub env: AgentEnv,
    /// This member's name, `<cluster>-<ordinal>` (given as a value: the agent runs in the pod
    /// the downward API named).
    pub pod_name: String,
    /// The ordinal parsed from the pod name.
    pub ordinal: i32,
    /// The role: from the ordinal when parsed, then from the leader record
    /// ([`crate::role::apply`]) before anything is prepared.
    pub role: Role,
    /// The master port as the contract gave it: in local mode member 0's port, from which
    /// member k's is counted (k more).
    pub base_master_port: u16,
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Settings> {
        Settings::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        Settings::from_contract(AgentEnv::from_lookup(lookup)?)
    }

    /// The settings of a member told `env`.
    pub fn from_contract(env: AgentEnv) -> Result<Settings> {
        let Some(pod_name) = env.pod_name().map(str::to_string) else {
            return Err(Error::Env {
                var: contract::env::POD_NAME,
                problem: "not given; the agent needs the member's name as a value".into(),
            });
        };
        let ordinal = pgset_spec::ordinal_of(&pod_name).ok_or_else(|| Error::Env {
            var: contract::env::POD_NAME,
            problem: format!("`{pod_name}` does not end in a numeric ordinal"),
        })?;
        Ok(Settings {
            base_master_port: env.master_port,
            env,
            pod_name,
            ordinal,
            role: Role::of_ordinal(ordinal),
        })
    }

    /// The member's namespace (required in Kubernetes mode).
    pub fn namespace(&self) -> Option<&str> {
        match &self.env.member {
            MemberIdentity::Given { namespace, .. } => namespace.as_deref(),
            MemberIdentity::FromPod => None,
        }
    }

    /// The pod's UID (Kubernetes mode, from the downward API): the holder identity of the
    /// member's Lease.
    pub fn pod_uid(&self) -> Option<&str> {
        match &self.env.member {
            MemberIdentity::Given { pod_uid, .. } => pod_uid.as_deref(),
            MemberIdentity::FromPod => None,
        }
    }

    /// How long a replica waits for its master ([`DEFAULT_MASTER_WAIT`] unless given).
    pub fn master_wait(&self) -> Duration {
        self.env.master_wait.unwrap_or(DEFAULT_MASTER_WAIT)
    }

    /// How long postgres may go without answering before liveness fails.
    pub fn liveness_timeout(&self) -> Duration {
        self.env
            .liveness_timeout
            .unwrap_or(crate::health::DEFAULT_LIVENESS_TIMEOUT)
    }

    /// WAL a replica may have received but not replayed and still be ready (the spec's
    /// default, [`pgset_spec::DEFAULT_MAX_REPLICA_LAG_BYTES`], unless given).
    pub fn max_replica_lag_bytes(&self) -> u64 {
        self.env
            .max_replica_lag_bytes
            .unwrap_or(pgset_spec::DEFAULT_MAX_REPLICA_LAG_BYTES)
    }

    /// How long a replica's replay may stand still while WAL waits and the replica still be
    /// ready (the spec's default, [`pgset_spec::DEFAULT_MAX_REPLICA_LAG_SECONDS`], unless given).
    pub fn max_replica_lag(&self) -> Duration {
        self.env.max_replica_lag.unwrap_or(Duration::from_secs(
            pgset_spec::DEFAULT_MAX_REPLICA_LAG_SECONDS,
        ))
    }

    /// The leader record's timings ([`DEFAULT_LEADER_LEASE`], the invariant checked).
    pub fn leader_timings(&self) -> Result<crate::leader::LeaderTimings> {
        crate::leader::LeaderTimings::for_lease(DEFAULT_LEADER_LEASE)
            .map_err(|e| Error::Failed(e.to_string()))
    }

    /// Whether a replica takes the master role when the master stops renewing the record
    /// (on unless [`contract::env::FAILOVER`] says `false`).
    pub fn failover(&self) -> bool {
        self.env.failover.unwrap_or(true)
    }

    /// How far behind what its master last reported a replica may be and still be promoted.
    pub fn maximum_lag_on_failover(&self) -> u64 {
        self.env
            .maximum_lag_on_failover
            .unwrap_or(pgset_spec::DEFAULT_MAXIMUM_LAG_ON_FAILOVER)
    }

    /// Synchronous replication, when on ([`contract::env::SYNCHRONOUS`]).
    pub fn synchronous(&self) -> Option<pgset_spec::Synchronous> {
        self.env.synchronous
    }

    /// The member's TLS files, when [`contract::env::TLS_DIR`] names their directory.
    pub fn tls(&self) -> Option<crate::tls::TlsFiles> {
        self.env.tls_dir.as_ref().map(crate::tls::TlsFiles::new)
    }

    /// Where a refusal or fatal error is written before the agent exits.
    pub fn termination_log(&self) -> Option<PathBuf> {
        self.env.termination_log_or_default()
    }

    /// PGDATA: `<data root>/<pod-name>`.
    pub fn pgdata(&self) -> PathBuf {
        self.env.data_root.join(&self.pod_name)
    }

    /// Where a first copy (initdb or base backup) is built before it is renamed into place.
    pub fn bootstrap_dir(&self) -> PathBuf {
        self.env
            .data_root
            .join(format!("{}.bootstrap", self.pod_name))
    }

    /// Where a member's data is kept aside when it is copied again (at most one such copy).
    pub fn previous_dir(&self) -> PathBuf {
        self.env
            .data_root
            .join(format!("{}.previous", self.pod_name))
    }

    /// This member's replication slot on the master.
    pub fn slot(&self) -> String {
        slot_name(&self.pod_name)
    }

    /// The file that holds the replication password in libpq's passfile format.
    pub fn replication_passfile(&self) -> PathBuf {
        self.env
            .socket_dir
            .join(format!("{}.pgpass", self.pod_name))
    }

    /// The local-mode pid file of the agent.
    pub fn agent_pid_file(&self) -> PathBuf {
        contract::agent_pid_file(&self.env.data_root, &self.pod_name)
    }

    /// A password file from the secret directory.
    pub fn secret_file(&self, key: &str) -> PathBuf {
        self.env.secret_dir.join(key)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pgset_spec::contract::env;
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
        assert_eq!(s.env.health_addr, Some("0.0.0.0:8008".parse().unwrap()));
        assert_eq!(s.master_wait(), DEFAULT_MASTER_WAIT);
        let mut m = base();
        m.insert(env::POD_NAME, "pgset-0".into());
        assert_eq!(parse(&m).unwrap().role, Role::Master);
        assert_eq!(Role::Master.label(), "master");
    }

    #[test]
    fn the_replica_lag_bound_is_the_spec_default_unless_given() {
        let s = parse(&base()).unwrap();
        assert_eq!(s.max_replica_lag_bytes(), 16 << 20);
        assert_eq!(s.max_replica_lag(), Duration::from_secs(10));
        let mut m = base();
        m.insert(env::MAX_REPLICA_LAG_BYTES, "1048576".into());
        m.insert(env::MAX_REPLICA_LAG_SECONDS, "3".into());
        let s = parse(&m).unwrap();
        assert_eq!(s.max_replica_lag_bytes(), 1 << 20);
        assert_eq!(s.max_replica_lag(), Duration::from_secs(3));
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
        assert_eq!(parse(&m).unwrap().env.health_addr, None);
    }
}
