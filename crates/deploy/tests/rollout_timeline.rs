//! The rollout's timeline against a mock API server: a scripted sequence of pod states (not
//! scheduled, scheduled, agent copied, the agent's phases, Ready), a quarter second apart, gives
//! each member's steps in order with when each began, and one line per member.

#[allow(dead_code)]
mod mock_api;

use std::time::Duration;

use mock_api::{Call, Collection, Reply, Timeline as Script, mock_client_replying};
use pgset_deploy::rollout::{RolloutEvent, TimelineStep, wait_for_rollout};
use pgset_spec::{ClusterSpec, ValidSpec};
use serde_json::{Value, json};

const NS: &str = "default";
const STATEFULSETS: &str = "/apis/apps/v1/namespaces/default/statefulsets";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn spec() -> ValidSpec {
    ClusterSpec::default().validated().unwrap()
}

/// How far member `ordinal` has come.
#[derive(Clone, Copy)]
enum At {
    Pending,
    Scheduled,
    Copied,
    Phase(&'static str),
    Ready,
}

fn pod(ordinal: i32, at: At) -> Value {
    let condition =
        |type_: &str, ok: bool| json!({"type": type_, "status": if ok { "True" } else { "False" }});
    let (scheduled, initialized, ready) = match at {
        At::Pending => (false, false, false),
        At::Scheduled => (true, false, false),
        At::Copied | At::Phase(_) => (true, true, false),
        At::Ready => (true, true, true),
    };
    let mut annotations = json!({});
    if let At::Phase(p) = at {
        annotations["pgset.io/phase"] = json!(p);
    }
    if let At::Ready = at {
        annotations["pgset.io/phase"] = json!("ready");
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("pgset-{ordinal}"), "namespace": NS,
            "labels": {"app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset",
                       "controller-revision-hash": "r1"},
            "annotations": annotations,
        },
        "spec": {"nodeName": if scheduled { json!("node-a") } else { Value::Null }, "containers": []},
        "status": {
            "phase": if initialized { "Running" } else { "Pending" },
            "conditions": [
                condition("PodScheduled", scheduled),
                condition("Initialized", initialized),
                condition("Ready", ready),
            ],
        }
    })
}

fn statefulset(created: usize, ready: usize) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "pgset", "namespace": NS, "generation": 1},
        "spec": {"replicas": 2, "serviceName": "pgset",
                 "selector": {"matchLabels": {"app.kubernetes.io/name": "pgset"}},
                 "template": {}},
        "status": {"observedGeneration": 1, "replicas": created, "readyReplicas": ready,
                   "updatedReplicas": created, "currentRevision": "r1", "updateRevision": "r1"}
    })
}

/// Two members started in order, each pod state a quarter second after the previous.
fn script() -> Script {
    let states: Vec<Vec<At>> = vec![
        vec![At::Pending],
        vec![At::Scheduled],
        vec![At::Copied],
        vec![At::Phase("initdb")],
        vec![At::Phase("starting")],
        vec![At::Ready, At::Pending],
        vec![At::Ready, At::Scheduled],
        vec![At::Ready, At::Copied],
        vec![At::Ready, At::Phase("base-backup")],
        vec![At::Ready, At::Phase("base-backup")],
        vec![At::Ready, At::Phase("starting")],
        vec![At::Ready, At::Ready],
    ];
    let (statefulsets, pods) = states
        .into_iter()
        .map(|members| {
            let ready = members.iter().filter(|m| matches!(m, At::Ready)).count();
            let pods: Vec<Value> = members
                .iter()
                .enumerate()
                .map(|(o, at)| pod(o as i32, *at))
                .collect();
            (vec![statefulset(pods.len(), ready)], pods)
        })
        .unzip();
    Script {
        collections: vec![
            Collection::new(STATEFULSETS, "StatefulSet", "apps/v1", statefulsets),
            Collection::new(PODS, "Pod", "v1", pods),
        ],
        step: Duration::from_millis(250),
    }
}

fn only(script: Script) -> impl FnMut(&Call) -> Reply + Send + 'static {
    move |call: &Call| {
        script
            .answer(call)
            .unwrap_or_else(|| panic!("unexpected {} {}", call.method, call.path))
    }
}

#[tokio::test(start_paused = true)]
async fn the_timeline_has_each_members_steps_in_order_with_when_each_began() {
    let (client, _) = mock_client_replying(only(script()));
    let mut events = Vec::new();
    let report = wait_for_rollout(
        &client,
        &spec(),
        2,
        Duration::from_secs(60),
        &mut |e: &RolloutEvent| events.push(e.clone()),
    )
    .await
    .unwrap();
    let timeline = &report.timeline;
    let names: Vec<&str> = timeline.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["pgset-0", "pgset-1"]);
    let steps = |k: usize| -> Vec<&str> {
        timeline.members[k]
            .steps
            .iter()
            .map(|s| s.step.as_str())
            .collect()
    };
    let words = |phase: &str| {
        pgset_spec::contract::MemberPhase::parse(phase)
            .unwrap()
            .words()
            .to_string()
    };
    assert_eq!(
        steps(0),
        [
            "waiting for a node".to_string(),
            "scheduled, copying the agent".to_string(),
            "agent copied, starting".to_string(),
            words("initdb"),
            words("starting"),
            "Ready".to_string(),
        ],
        "{timeline:#?}"
    );
    // The second member: not created while the first starts, then its own steps; a repeated
    // state (the copy's second look) adds no step.
    assert_eq!(
        steps(1),
        [
            "not created yet".to_string(),
            "waiting for a node".to_string(),
            "scheduled, copying the agent".to_string(),
            "agent copied, starting".to_string(),
            words("base-backup"),
            words("starting"),
            "Ready".to_string(),
        ],
        "{timeline:#?}"
    );
    // Each step's time is when its state was served (a quarter second per state), rising.
    for m in &timeline.members {
        let at: Vec<f64> = m.steps.iter().map(|s| s.seconds).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{}: {at:?}", m.name);
    }
    let ready_at = |k: usize| timeline.members[k].steps.last().unwrap().seconds;
    assert!(
        (1.0..=1.6).contains(&ready_at(0)),
        "pgset-0 Ready in the 6th state: {timeline:#?}"
    );
    assert!(
        (2.5..=3.1).contains(&ready_at(1)),
        "pgset-1 Ready in the 12th state: {timeline:#?}"
    );
    let base_backup = &timeline.members[1].steps[4];
    let starting = &timeline.members[1].steps[5];
    assert!(
        (starting.seconds - base_backup.seconds - 0.5).abs() < 0.01,
        "the copy lasted two states: {base_backup:?} {starting:?}"
    );

    // One line per member, each step with its start and length.
    let lines = timeline.lines();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].starts_with("pgset-1: +0.0s not created yet ("),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains(" → "), "{}", lines[1]);
    assert!(lines[1].ends_with(" Ready"), "{}", lines[1]);

    // The JSON a script reads.
    let value = serde_json::to_value(timeline).unwrap();
    assert_eq!(value["members"][1]["name"], "pgset-1");
    assert_eq!(
        value["members"][1]["steps"][6],
        serde_json::to_value(TimelineStep {
            step: "Ready".into(),
            seconds: ready_at(1)
        })
        .unwrap()
    );
}
