//! A scripted stand-in for the API server (tower-test): records every request the client
//! sends and answers through a handler, so tests assert method, path, query and body.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the client sent it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    /// `METHOD path`, e.g. `PATCH /api/v1/namespaces/default/services/pgset`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// True for requests that change something.
    pub fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

/// The recorded calls of a mock.
pub type Calls = Arc<Mutex<Vec<Call>>>;

/// How the stand-in answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// One JSON document with this HTTP status.
    Json(u16, Value),
    /// A watch's answer: these events as JSON lines, then the server closes the watch.
    Events(Vec<Value>),
    /// No answer at all (a watch with nothing to report): the request stays open.
    Hang,
    /// The reply, after this long.
    After(Duration, Box<Reply>),
}

/// A client whose requests go to `handler`, which returns `(status, body)`.
pub fn mock_client<H>(mut handler: H) -> (Client, Calls)
where
    H: FnMut(&Call) -> (u16, Value) + Send + 'static,
{
    mock_client_replying(move |call| {
        let (status, body) = handler(call);
        Reply::Json(status, body)
    })
}

/// A client whose requests go to `handler`, which says how to answer each (watches included).
pub fn mock_client_replying<H>(mut handler: H) -> (Client, Calls)
where
    H: FnMut(&Call) -> Reply + Send + 'static,
{
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let reply = handler(&call);
            recorded.lock().unwrap().push(call);
            match reply {
                Reply::Json(..) | Reply::Events(_) => send.send_response(response(reply)),
                later => {
                    tokio::spawn(async move {
                        let mut reply = later;
                        while let Reply::After(delay, next) = reply {
                            tokio::time::sleep(delay).await;
                            reply = *next;
                        }
                        if let Reply::Hang = reply {
                            std::future::pending::<()>().await;
                        }
                        send.send_response(response(reply));
                    });
                }
            }
        }
    });
    (Client::new(service, "default"), calls)
}

fn response(reply: Reply) -> Response<Body> {
    let (status, bytes) = match reply {
        Reply::Json(status, body) => (status, serde_json::to_vec(&body).unwrap()),
        Reply::Events(events) => (
            200,
            events
                .iter()
                .flat_map(|e| {
                    let mut line = serde_json::to_vec(e).unwrap();
                    line.push(b'\n');
                    line
                })
                .collect(),
        ),
        Reply::Hang | Reply::After(..) => unreachable!("resolved before answering"),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .unwrap()
}

/// True for a watch request (`?watch=true`).
pub fn is_watch(call: &Call) -> bool {
    query_pairs(call).iter().any(|p| p == "watch=true")
}

/// The value of query parameter `key`, if sent.
pub fn query_value(call: &Call, key: &str) -> Option<String> {
    query_pairs(call)
        .into_iter()
        .find_map(|p| p.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// A cluster whose objects change in steps: each collection has its objects at every step.
/// A list answers with step 0; a watch from step `n` answers, `step` later, with the events
/// that lead to step `n + 1` and a bookmark, and the server then closes it; from the last
/// step a watch gets no answer. Resource versions are `step + 1`.
pub struct Timeline {
    /// `(collection path, list kind, object kind, api version, objects at each step)`.
    pub collections: Vec<Collection>,
    /// Time between two steps.
    pub step: Duration,
}

/// One collection of a [`Timeline`].
pub struct Collection {
    pub path: String,
    pub kind: String,
    pub api_version: String,
    pub steps: Vec<Vec<Value>>,
}

impl Collection {
    pub fn new(path: &str, kind: &str, api_version: &str, steps: Vec<Vec<Value>>) -> Collection {
        Collection {
            path: path.into(),
            kind: kind.into(),
            api_version: api_version.into(),
            steps,
        }
    }
}

fn versioned(obj: &Value, version: usize) -> Value {
    let mut obj = obj.clone();
    obj["metadata"]["resourceVersion"] = json!(version.to_string());
    obj
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

impl Timeline {
    /// The answer to `call` when it lists or watches one of the collections.
    pub fn answer(&self, call: &Call) -> Option<Reply> {
        let c = self.collections.iter().find(|c| c.path == call.path)?;
        if !is_watch(call) {
            let items: Vec<Value> = c.steps[0].iter().map(|o| versioned(o, 1)).collect();
            return Some(Reply::Json(
                200,
                json!({"apiVersion": c.api_version, "kind": format!("{}List", c.kind),
                       "metadata": {"resourceVersion": "1"}, "items": items}),
            ));
        }
        let from: usize = query_value(call, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .expect("a watch resumes from a resource version");
        let (before, after) = match (c.steps.get(from - 1), c.steps.get(from)) {
            (Some(before), Some(after)) => (before, after),
            _ => return Some(Reply::Hang),
        };
        let version = from + 1;
        let mut events = Vec::new();
        for obj in after {
            let kind = if before.iter().any(|b| name_of(b) == name_of(obj)) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            events.push(json!({"type": kind, "object": versioned(obj, version)}));
        }
        for gone in before
            .iter()
            .filter(|b| !after.iter().any(|a| name_of(a) == name_of(b)))
        {
            events.push(json!({"type": "DELETED", "object": versioned(gone, version)}));
        }
        events.push(json!({"type": "BOOKMARK", "object": {
            "apiVersion": c.api_version, "kind": c.kind,
            "metadata": {"resourceVersion": version.to_string()}}}));
        Some(Reply::After(self.step, Box::new(Reply::Events(events))))
    }
}

/// The API server's answer for an absent object.
pub fn not_found(path: &str) -> (u16, Value) {
    (
        404,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{path} not found"), "reason": "NotFound", "code": 404
        }),
    )
}

/// The query parameters of a call as `key=value` strings.
pub fn query_pairs(call: &Call) -> Vec<String> {
    call.query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Echoes an applied or created object back with a resourceVersion, as the server does.
pub fn echo_with_version(call: &Call, version: &str) -> (u16, Value) {
    let mut obj = call.body.clone();
    obj["metadata"]["resourceVersion"] = json!(version);
    (200, obj)
}
