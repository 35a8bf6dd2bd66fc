//! The agent's env contract as deploy renders it into the pod and as local mode gives it to a
//! member process: the same variables, differing only where a pod and a local process must.
//! Nothing is started: these compare the rendered environments.

use std::collections::BTreeSet;
use std::time::Duration;

use pgset_agent::settings::Settings;
use pgset_deploy::statefulset::agent_env;
use pgset_local::{self as local, LocalSet, UpOptions};
use pgset_spec::ClusterSpec;
use pgset_spec::contract::env;

/// A set named like `spec`, and local options with the data opt-ins of `spec` and its TLS
/// (`local up --tls` for a spec with TLS on).
fn local_twin(spec: &ClusterSpec) -> (UpOptions, LocalSet) {
    let mut opts = UpOptions::new("/srv/pgset-local", spec.replicas, 25432, "/bin/pgset-agent");
    opts.name = spec.name.clone();
    opts.allow_reinit = spec.postgres.allow_reinit;
    opts.adopt_unmarked = spec.postgres.adopt_unmarked_data;
    opts.tls = spec.tls.enabled();
    let set = LocalSet {
        name: spec.name.clone(),
        port: opts.port,
    };
    (opts, set)
}

fn deploy_names(spec: &ClusterSpec) -> BTreeSet<String> {
    agent_env(spec).into_iter().map(|e| e.name).collect()
}

fn local_names(opts: &UpOptions, set: &LocalSet, k: i32) -> BTreeSet<String> {
    local::member_env(opts, set, k)
        .unwrap()
        .into_iter()
        .map(|(name, _)| name.to_string())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|n| n.to_string()).collect()
}

#[test]
fn deploy_and_local_mode_name_the_same_variables_but_for_the_pods_own() {
    for opt_ins in [false, true] {
        let mut spec = ClusterSpec::default();
        spec.postgres.allow_reinit = opt_ins;
        spec.postgres.adopt_unmarked_data = opt_ins;
        if opt_ins {
            spec.tls.mode = pgset_spec::TlsMode::Off;
        } else {
            // As deploy writes it once it found the pod network (local mode's is the loopback).
            spec.access.replication_from = vec!["10.244.0.0/16".parse().unwrap()];
        }
        let (opts, set) = local_twin(&spec);
        let pod = deploy_names(&spec);
        for k in [0, 1] {
            let process = local_names(&opts, &set, k);
            // A pod has a UID (its Lease holder identity) and the default termination-message
            // path; a local process has neither, and reads membership from a file instead of
            // the API.
            assert_eq!(
                pod.difference(&process).cloned().collect::<BTreeSet<_>>(),
                names(&[env::POD_UID]),
                "opt-ins {opt_ins}, member {k}"
            );
            assert_eq!(
                process.difference(&pod).cloned().collect::<BTreeSet<_>>(),
                names(&[env::MEMBERS_FILE, env::TERMINATION_LOG]),
                "opt-ins {opt_ins}, member {k}"
            );
        }
        let switches = names(&[env::ALLOW_REINIT, env::ADOPT_UNMARKED]);
        assert_eq!(pod.is_superset(&switches), opt_ins, "{pod:?}");
        // TLS on (the default) in both, or off in both.
        assert_eq!(pod.contains(env::TLS_DIR), spec.tls.enabled(), "{pod:?}");
    }
}

#[test]
fn every_variable_local_mode_can_write_is_in_the_contract() {
    let spec = ClusterSpec::default();
    let (mut opts, set) = local_twin(&spec);
    opts.master_wait = Some(Duration::from_secs(30));
    opts.basebackup_max_rate = Some("50M".into());
    opts.pg_bin_dir = Some("/usr/lib/postgresql/18/bin".into());
    opts.liveness_timeout = Some(Duration::from_secs(20));
    opts.allow_reinit = true;
    opts.adopt_unmarked = true;
    opts.failover = false;
    opts.synchronous = Some(pgset_spec::Synchronous {
        number: 1,
        durability: pgset_spec::Durability::Required,
    });
    opts.tls = true;
    let mut all = local_names(&opts, &set, 1);
    all.extend(deploy_names(&spec));
    assert_eq!(all, names(env::ALL));
}

#[test]
fn the_agent_reads_local_modes_environment_as_given() {
    let spec = ClusterSpec::default();
    let (mut opts, set) = local_twin(&spec);
    opts.master_wait = Some(Duration::from_secs(30));
    opts.liveness_timeout = Some(Duration::from_secs(20));
    let vars = local::member_env(&opts, &set, 2).unwrap();
    let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let s = Settings::from_lookup(get).unwrap();
    assert_eq!(s.pod_name, "pgset-2");
    assert_eq!(s.ordinal, 2);
    assert_eq!(s.env.port, 25434);
    assert_eq!(s.env.master_port, 25432);
    assert_eq!(s.env.health_addr, Some(set.health_addr(2)));
    assert_eq!(s.master_wait(), Duration::from_secs(30));
    assert_eq!(s.liveness_timeout(), Duration::from_secs(20));
    assert_eq!(
        s.env.members_file.as_deref(),
        Some(opts.dir.join(local::MEMBERS_FILE).as_path())
    );
    assert_eq!(
        s.termination_log(),
        Some(local::termination_log(&opts.dir, "pgset-2"))
    );
}
