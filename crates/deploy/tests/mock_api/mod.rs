//! A scripted stand-in for the API server (tower-test): records every request the client
//! sends and answers through a handler, so tests assert method, path, query and body.

use std::sync::{Arc, Mutex};

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

/// A client whose requests go to `handler`, which returns `(status, body)`.
pub fn mock_client<H>(mut handler: H) -> (Client, Calls)
where
    H: FnMut(&Call) -> (u16, Value) + Send + 'static,
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
            let (status, answer) = handler(&call);
            recorded.lock().unwrap().push(call);
            let response = Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, "default"), calls)
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
