//! The leader Lease against a scripted API server (tower-test), on tokio's paused clock: the
//! exact requests of create, take-over, renewal, release and hand over, a 404 that only the
//! bootstrap candidate may fill, a 409 that is a lost race naming the winner, and a 500, a
//! timeout or an unreadable Lease that are errors, never a free record.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use pgset_agent::leader::{
    Claim, Holder, HolderWrite, IfAbsent, LeaderError, LeaderStore, LeaderTimings, LeaseStore,
    Observer, Written,
};
use serde_json::{Value, json};
use tokio::time::Instant;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/db/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/db/leases/pgset-leader";

/// One request the client sent, and when (on the paused clock, since the server started).
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    body: Value,
    at: Duration,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// A server answering every request with `answer(call)`; `None` never answers.
fn serve(
    mut answer: impl FnMut(&Call) -> Option<(u16, Value)> + Send + 'static,
) -> (Client, Calls) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::default();
    let record = calls.clone();
    let start = Instant::now();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        let mut unanswered = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                at: start.elapsed(),
            };
            let reply = answer(&call);
            record.lock().unwrap().push(call);
            match reply {
                Some((status, value)) => send.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&value).unwrap()))
                        .unwrap(),
                ),
                None => unanswered.push(send),
            }
        }
    });
    (Client::new(service, "db"), calls)
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

/// The leader Lease as the API server returns it.
fn lease(holder: Option<(&str, &str)>, timeline: u32, rv: &str, transitions: i32) -> Value {
    let mut annotations = json!({"pgset.io/leader-timeline": timeline.to_string()});
    let mut spec = json!({"leaseDurationSeconds": 13,
                          "acquireTime": "2020-01-01T00:00:00.000000Z",
                          "renewTime": "2020-01-01T00:00:00.000000Z",
                          "leaseTransitions": transitions});
    if let Some((member, uid)) = holder {
        annotations["pgset.io/leader-member"] = json!(member);
        spec["holderIdentity"] = json!(uid);
    }
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "pgset-leader", "namespace": "db", "resourceVersion": rv,
                        "annotations": annotations},
           "spec": spec})
}

/// The API server's answer to a write: the body as stored, with a new resourceVersion.
fn stored(body: &Value, rv: u64) -> Value {
    let mut v = body.clone();
    v["metadata"]["resourceVersion"] = json!(rv.to_string());
    v["metadata"]["namespace"] = json!("db");
    v
}

/// The body with its wall-clock times checked (RFC 3339 with microseconds) and blanked.
fn redacted(body: &Value) -> Value {
    let mut v = body.clone();
    for key in ["acquireTime", "renewTime"] {
        if let Some(t) = v["spec"].get(key) {
            let t = t.as_str().unwrap_or_default();
            assert!(
                t.ends_with('Z') && t.contains('T'),
                "{key} is not a timestamp: {t}"
            );
            v["spec"][key] = json!("<time>");
        }
    }
    v
}

fn labels() -> Value {
    json!({"app.kubernetes.io/name": "pgset", "app.kubernetes.io/instance": "pgset",
           "app.kubernetes.io/managed-by": "pgset"})
}

fn me() -> Holder {
    Holder::new("pgset-1", "uid-1")
}

fn store(client: Client) -> LeaseStore {
    LeaseStore::new(
        client,
        "db",
        "pgset",
        me(),
        LeaderTimings::for_lease(Duration::from_secs(13)).unwrap(),
    )
}

fn calls(c: &Calls) -> Vec<Call> {
    c.lock().unwrap().clone()
}

fn methods(c: &[Call]) -> Vec<(&str, &str)> {
    c.iter()
        .map(|c| (c.method.as_str(), c.path.as_str()))
        .collect()
}

fn taken(claim: Claim) -> Written {
    match claim {
        Claim::Taken(w) => w,
        other => panic!("expected Taken, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_bootstrap_candidate_creates_the_lease_and_no_one_else_does() {
    let (client, seen) = serve(|call| match (call.method.as_str(), call.path.as_str()) {
        ("GET", LEASE) => Some((404, status(404, "NotFound"))),
        ("POST", LEASES) => Some((201, stored(&call.body, 41))),
        _ => Some((500, status(500, "unexpected"))),
    });
    let s = store(client);
    // Not the bootstrap candidate: a missing Lease is waited for, never created.
    assert_eq!(
        s.acquire(1, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
        Claim::NoRecord
    );
    assert_eq!(methods(&calls(&seen)), [("GET", LEASE)]);

    let w = taken(
        s.acquire(1, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap(),
    );
    let c = calls(&seen);
    assert_eq!(
        methods(&c),
        [("GET", LEASE), ("GET", LEASE), ("POST", LEASES)]
    );
    assert_eq!(
        redacted(&c[2].body),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "pgset-leader", "labels": labels(),
                            "annotations": {"pgset.io/leader-member": "pgset-1",
                                            "pgset.io/leader-timeline": "1"}},
               "spec": {"holderIdentity": "uid-1", "leaseDurationSeconds": 13,
                        "acquireTime": "<time>", "renewTime": "<time>",
                        "leaseTransitions": 0}})
    );
    assert_eq!(w.record.holder, Some(me()));
    assert_eq!(w.record.version.as_str(), "41");
    assert_eq!(w.record.lease_duration, Duration::from_secs(13));
}

#[tokio::test(start_paused = true)]
async fn a_create_that_conflicts_is_a_lost_race_naming_the_winner() {
    let mut gets = 0;
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => {
                gets += 1;
                Some(if gets == 1 {
                    (404, status(404, "NotFound"))
                } else {
                    (200, lease(Some(("pgset-0", "uid-0")), 1, "5", 0))
                })
            }
            ("POST", LEASES) => Some((409, status(409, "AlreadyExists"))),
            _ => Some((500, status(500, "unexpected"))),
        },
    );
    let claim = store(client)
        .acquire(1, IfAbsent::Create, &mut Observer::new())
        .await
        .unwrap();
    match claim {
        Claim::LostRace(Some(r)) => {
            assert_eq!(r.holder, Some(Holder::new("pgset-0", "uid-0")));
            assert_eq!(r.version.as_str(), "5");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        methods(&calls(&seen)),
        [("GET", LEASE), ("POST", LEASES), ("GET", LEASE)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_is_taken_only_after_its_duration_unchanged_on_this_clock() {
    // The holder renews twice more (the version changes at the first three reads), then stops.
    // Its renew time is years in the past by wall clock: that must not matter.
    let mut gets = 0u64;
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => {
                gets += 1;
                let rv = (6 + gets.min(3)).to_string();
                Some((200, lease(Some(("pgset-0", "uid-0")), 2, &rv, 4)))
            }
            ("PUT", LEASE) => Some((200, stored(&call.body, 50))),
            _ => Some((500, status(500, "unexpected"))),
        },
    );
    let s = store(client);
    let mut observer = Observer::new();
    let start = Instant::now();
    let w = loop {
        match s.acquire(3, IfAbsent::Wait, &mut observer).await.unwrap() {
            Claim::HeldBy { record, expires_in } => {
                assert_eq!(record.holder, Some(Holder::new("pgset-0", "uid-0")));
                assert!(expires_in > Duration::ZERO);
                tokio::time::sleep(expires_in.min(Duration::from_secs(1))).await;
            }
            Claim::Taken(w) => break w,
            other => panic!("{other:?}"),
        }
    };
    // The last version ("9") was first seen at 2 s: taken at 15 s (its 13 s later), not earlier.
    assert_eq!(w.sent - start, Duration::from_secs(15));
    let c = calls(&seen);
    let put = c.iter().find(|c| c.method == "PUT").unwrap();
    assert_eq!(put.at, Duration::from_secs(15), "{:?}", methods(&c));
    assert!(
        c.iter()
            .filter(|c| c.at < Duration::from_secs(15))
            .all(|c| c.method == "GET")
    );
    assert_eq!(put.path, LEASE);
    assert_eq!(
        redacted(&put.body),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "pgset-leader", "namespace": "db", "resourceVersion": "9",
                            "labels": labels(),
                            "annotations": {"pgset.io/leader-member": "pgset-1",
                                            "pgset.io/leader-timeline": "3"}},
               "spec": {"holderIdentity": "uid-1", "leaseDurationSeconds": 13,
                        "acquireTime": "<time>", "renewTime": "<time>",
                        "leaseTransitions": 5}})
    );
    assert_eq!(w.record.version.as_str(), "50");
    assert_eq!(w.record.holder, Some(me()));
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_take_over_is_a_lost_race_naming_the_winner_after_a_re_read() {
    let mut gets = 0;
    let (client, seen) = serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => {
                gets += 1;
                Some(if gets == 1 {
                    (200, lease(None, 2, "8", 3))
                } else {
                    (200, lease(Some(("pgset-2", "uid-2")), 2, "9", 4))
                })
            }
            ("PUT", LEASE) => Some((409, status(409, "Conflict"))),
            _ => Some((500, status(500, "unexpected"))),
        },
    );
    let claim = store(client)
        .acquire(2, IfAbsent::Wait, &mut Observer::new())
        .await
        .unwrap();
    match claim {
        Claim::LostRace(Some(r)) => {
            assert_eq!(r.holder, Some(Holder::new("pgset-2", "uid-2")));
            assert_eq!(r.version.as_str(), "9");
        }
        other => panic!("{other:?}"),
    }
    let c = calls(&seen);
    assert_eq!(
        methods(&c),
        [("GET", LEASE), ("PUT", LEASE), ("GET", LEASE)]
    );
    assert_eq!(c[1].body["metadata"]["resourceVersion"], json!("8"));
    assert_eq!(c[1].at, Duration::ZERO, "a released Lease is taken at once");
}

/// A server that keeps what is written, with compare-and-swap on `resourceVersion`.
fn faithful(initial: Value) -> (Client, Calls) {
    let mut current = initial;
    let mut rv = 20u64;
    serve(
        move |call| match (call.method.as_str(), call.path.as_str()) {
            ("GET", LEASE) => Some((200, current.clone())),
            ("PUT", LEASE)
                if call.body["metadata"]["resourceVersion"]
                    == current["metadata"]["resourceVersion"] =>
            {
                rv += 1;
                current = stored(&call.body, rv);
                Some((200, current.clone()))
            }
            ("PUT", LEASE) => Some((409, status(409, "Conflict"))),
            _ => Some((500, status(500, "unexpected"))),
        },
    )
}

#[tokio::test(start_paused = true)]
async fn renew_hand_over_and_release_are_writes_on_the_held_version() {
    let (client, seen) = faithful(lease(Some(("pgset-1", "uid-1")), 1, "20", 2));
    let s = store(client.clone());
    // Its own Lease (an agent restarted in the same pod) is taken at once.
    let held = taken(
        s.acquire(1, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
    );
    assert_eq!(held.record.transitions, 2, "its own Lease: no transition");
    let renewed = match s.renew(&held.record, 2).await.unwrap() {
        HolderWrite::Done(w) => w,
        other => panic!("{other:?}"),
    };
    assert_eq!(renewed.record.timeline, 2);
    let c = calls(&seen);
    assert_eq!(
        methods(&c),
        [("GET", LEASE), ("PUT", LEASE), ("PUT", LEASE)]
    );
    assert_eq!(c[1].body["metadata"]["resourceVersion"], json!("20"));
    assert_eq!(c[2].body["metadata"]["resourceVersion"], json!("21"));
    assert_eq!(
        c[2].body["metadata"]["annotations"]["pgset.io/leader-timeline"],
        json!("2")
    );
    assert_eq!(c[2].body["spec"]["holderIdentity"], json!("uid-1"));

    let to = Holder::new("pgset-2", "uid-2");
    let handed = match s.hand_over(&renewed.record, &to).await.unwrap() {
        HolderWrite::Done(w) => w.record,
        other => panic!("{other:?}"),
    };
    assert_eq!(handed.holder, Some(to.clone()));
    let c = calls(&seen);
    assert_eq!(methods(&c[3..]), [("PUT", LEASE)]);
    assert_eq!(
        redacted(&c[3].body),
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "pgset-leader", "namespace": "db", "resourceVersion": "22",
                            "labels": labels(),
                            "annotations": {"pgset.io/leader-member": "pgset-2",
                                            "pgset.io/leader-timeline": "2"}},
               "spec": {"holderIdentity": "uid-2", "leaseDurationSeconds": 13,
                        "acquireTime": "<time>", "renewTime": "<time>",
                        "leaseTransitions": 3}})
    );
    // Handed over: a record naming another holder is not written at all, and the record this
    // member held before is refused by the server and named after a re-read.
    assert!(matches!(
        s.release(&handed).await.unwrap(),
        HolderWrite::NotHolder(Some(_))
    ));
    assert_eq!(calls(&seen).len(), 4);
    match s.release(&renewed.record).await.unwrap() {
        HolderWrite::NotHolder(Some(r)) => assert_eq!(r.holder, Some(to.clone())),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        methods(&calls(&seen)[4..]),
        [("PUT", LEASE), ("GET", LEASE)]
    );

    // The new holder takes it by its own first write, then releases it.
    let next = LeaseStore::new(
        client,
        "db",
        "pgset",
        to,
        LeaderTimings::for_lease(Duration::from_secs(13)).unwrap(),
    );
    let mine = taken(
        next.acquire(3, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
    );
    let released = match next.release(&mine.record).await.unwrap() {
        HolderWrite::Done(w) => w.record,
        other => panic!("{other:?}"),
    };
    assert_eq!(released.holder, None);
    assert_eq!(released.timeline, 3);
    let c = calls(&seen);
    assert_eq!(
        methods(&c[6..]),
        [("GET", LEASE), ("PUT", LEASE), ("PUT", LEASE)]
    );
    let body = &c[8].body;
    assert_eq!(body["metadata"]["resourceVersion"], json!("24"));
    assert!(body["spec"].get("holderIdentity").is_none(), "{body}");
    assert_eq!(
        body["metadata"]["annotations"],
        json!({"pgset.io/leader-timeline": "3"}),
        "a released Lease names no member and keeps the timeline"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_conflicts_is_lost_when_another_member_holds_it() {
    let (client, seen) = serve(|call| match (call.method.as_str(), call.path.as_str()) {
        ("GET", LEASE) if call.at.is_zero() => {
            Some((200, lease(Some(("pgset-1", "uid-1")), 1, "30", 0)))
        }
        ("GET", LEASE) => Some((200, lease(Some(("pgset-0", "uid-0b")), 1, "33", 1))),
        ("PUT", LEASE) if call.at.is_zero() => Some((200, stored(&call.body, 31))),
        ("PUT", LEASE) => Some((409, status(409, "Conflict"))),
        _ => Some((500, status(500, "unexpected"))),
    });
    let s = store(client);
    let held = taken(
        s.acquire(1, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    match s.renew(&held.record, 1).await.unwrap() {
        HolderWrite::NotHolder(Some(r)) => {
            assert_eq!(r.holder, Some(Holder::new("pgset-0", "uid-0b")));
        }
        other => panic!("{other:?}"),
    }
    let c = calls(&seen);
    assert_eq!(
        methods(&c[2..]),
        [("PUT", LEASE), ("GET", LEASE)],
        "no second write once another holds it"
    );
    assert_eq!(c[2].body["metadata"]["resourceVersion"], json!("31"));
}

#[tokio::test(start_paused = true)]
async fn a_server_error_a_timeout_or_an_unreadable_lease_is_never_free() {
    // 500 on read.
    let (client, seen) = serve(|_| Some((500, status(500, "etcdserver: request timed out"))));
    let e = store(client)
        .acquire(1, IfAbsent::Create, &mut Observer::new())
        .await
        .unwrap_err();
    assert!(matches!(e, LeaderError::Api(_)), "{e:?}");
    assert!(e.to_string().contains("get leases/pgset-leader"), "{e}");
    assert_eq!(methods(&calls(&seen)), [("GET", LEASE)], "no write follows");

    // 500 on the take-over write.
    let (client, seen) = serve(|call| match call.method.as_str() {
        "GET" => Some((200, lease(None, 1, "3", 0))),
        _ => Some((500, status(500, "InternalError"))),
    });
    let e = store(client)
        .acquire(1, IfAbsent::Wait, &mut Observer::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("update leases/pgset-leader"), "{e}");
    assert_eq!(methods(&calls(&seen)), [("GET", LEASE), ("PUT", LEASE)]);

    // No answer: an error after the call budget (the renewal interval, 2 s).
    let (client, seen) = serve(|_| None);
    let start = Instant::now();
    let e = store(client)
        .acquire(1, IfAbsent::Create, &mut Observer::new())
        .await
        .unwrap_err();
    assert!(matches!(e, LeaderError::Timeout { .. }), "{e:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(methods(&calls(&seen)), [("GET", LEASE)]);

    // A holder without its member annotation, or without a duration: unreadable, not free.
    for broken in [
        {
            let mut l = lease(Some(("pgset-0", "uid-0")), 1, "4", 0);
            l["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove("pgset.io/leader-member");
            l
        },
        {
            let mut l = lease(None, 1, "4", 0);
            l["spec"]
                .as_object_mut()
                .unwrap()
                .remove("leaseDurationSeconds");
            l
        },
        {
            let mut l = lease(None, 1, "4", 0);
            l["metadata"]["annotations"]["pgset.io/leader-timeline"] = json!("x");
            l
        },
    ] {
        let (client, seen) = serve(move |_| Some((200, broken.clone())));
        let e = store(client)
            .acquire(1, IfAbsent::Create, &mut Observer::new())
            .await
            .unwrap_err();
        assert!(matches!(e, LeaderError::Corrupt { .. }), "{e:?}");
        assert_eq!(methods(&calls(&seen)), [("GET", LEASE)]);
    }

    // A 403 names the verb the Role lacks.
    let (client, _) = serve(|_| Some((403, status(403, "Forbidden"))));
    let e = store(client).read().await.unwrap_err().to_string();
    assert!(
        e.contains("`get` leases") && e.contains("coordination.k8s.io"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn of_two_contenders_for_a_released_lease_exactly_one_wins() {
    let (client, seen) = faithful(lease(None, 4, "20", 1));
    let timings = LeaderTimings::for_lease(Duration::from_secs(13)).unwrap();
    let other = Holder::new("pgset-2", "uid-2");
    let a = store(client.clone());
    let b = LeaseStore::new(client, "db", "pgset", other.clone(), timings);
    let (mut oa, mut ob) = (Observer::new(), Observer::new());
    let (ca, cb) = tokio::join!(
        a.acquire(4, IfAbsent::Wait, &mut oa),
        b.acquire(4, IfAbsent::Wait, &mut ob)
    );
    let claims = [ca.unwrap(), cb.unwrap()];
    let winners: Vec<&Written> = claims
        .iter()
        .filter_map(|c| match c {
            Claim::Taken(w) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    let winner = winners[0].record.holder.clone().unwrap();
    let named = claims.iter().find_map(|c| match c {
        Claim::LostRace(Some(r)) | Claim::HeldBy { record: r, .. } => r.holder.clone(),
        _ => None,
    });
    assert_eq!(named, Some(winner));
    let c = calls(&seen);
    let puts: Vec<&Call> = c.iter().filter(|c| c.method == "PUT").collect();
    // Both read the released version and both wrote on it: the server's CAS settled it.
    assert_eq!(puts.len(), 2, "{:?}", methods(&c));
    assert!(
        puts.iter()
            .all(|p| p.body["metadata"]["resourceVersion"] == json!("20")),
        "both wrote on the version they read: {:?}",
        methods(&c)
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_keeps_what_others_wrote_on_the_lease_such_as_the_failover_pause() {
    let mut paused = lease(Some(("pgset-1", "uid-1")), 1, "20", 0);
    paused["metadata"]["annotations"]["pgset.io/failover"] = json!("paused");
    let (client, seen) = faithful(paused);
    let s = store(client);
    let held = taken(
        s.acquire(1, IfAbsent::Wait, &mut Observer::new())
            .await
            .unwrap(),
    );
    assert!(held.record.failover_paused(), "{:?}", held.record.notes);
    let renewed = match s.renew(&held.record, 1).await.unwrap() {
        HolderWrite::Done(w) => w,
        other => panic!("{other:?}"),
    };
    assert!(renewed.record.failover_paused());
    let c = calls(&seen);
    for put in c.iter().filter(|c| c.method == "PUT") {
        assert_eq!(
            put.body["metadata"]["annotations"],
            json!({"pgset.io/failover": "paused", "pgset.io/leader-member": "pgset-1",
                   "pgset.io/leader-timeline": "1"}),
            "every write keeps the pause"
        );
    }
    // Released, the pause stays: it is the user's, not the holder's.
    let released = match s.release(&renewed.record).await.unwrap() {
        HolderWrite::Done(w) => w.record,
        other => panic!("{other:?}"),
    };
    assert!(released.failover_paused());
    assert_eq!(released.note("pgset.io/leader-member"), None);
}
