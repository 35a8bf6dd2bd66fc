//! The whole exec path over a real websocket: a local server speaks the API server's
//! `v4.channel.k8s.io` exec protocol (channel 1 stdout, 2 stderr, 3 the status object), and
//! `PodExec` collects the output (larger than the client's pipe buffers), the exit code, a
//! stream that ends without a status, and a command that never ends.

use std::time::Duration;

use futures::SinkExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use pgset_verify::Error;
use pgset_verify::exec::PodExec;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the fake API server sends after the upgrade.
#[derive(Clone)]
enum Script {
    /// These frames (channel byte first), then close.
    Frames(Vec<Vec<u8>>),
    /// Nothing, and keep the connection open.
    Hang,
}

fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![channel];
    f.extend_from_slice(data);
    f
}

/// Serves one exec; returns a client for it and the request URI the server saw.
#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
async fn serve_one(script: Script) -> (Client, oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (uri_tx, uri_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws =
            tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, mut resp: Response| {
                let _ = uri_tx.send(req.uri().to_string());
                resp.headers_mut().insert(
                    "Sec-WebSocket-Protocol",
                    "v4.channel.k8s.io".parse().unwrap(),
                );
                Ok(resp)
            })
            .await
            .unwrap();
        match script {
            Script::Frames(frames) => {
                for f in frames {
                    ws.send(Message::binary(f)).await.unwrap();
                }
                let _ = ws.close(None).await;
            }
            Script::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (Client::try_from(config).unwrap(), uri_rx)
}

fn exec(client: Client, timeout: Duration) -> PodExec {
    PodExec::new(Api::<Pod>::namespaced(client, "default"), timeout)
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[tokio::test]
async fn collects_large_output_and_a_zero_exit() {
    // More than the 64 KiB pipes, split over many frames, interleaved with stderr.
    let line = b"pgset-1|streaming|async|0|0.005288\n";
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for i in 0..4000 {
        frames.push(frame(1, line));
        expected.extend_from_slice(line);
        if i % 1000 == 0 {
            frames.push(frame(2, b"NOTICE:  00000: still working\n"));
        }
    }
    frames.push(frame(3, br#"{"metadata":{},"status":"Success"}"#));
    let (client, uri) = serve_one(Script::Frames(frames)).await;
    let out = exec(client, Duration::from_secs(20))
        .run("pgset-0", "postgres", &argv(&["psql", "-c", "select 1"]))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.len(), expected.len());
    assert_eq!(out.stdout.as_bytes(), expected.as_slice());
    assert_eq!(out.stderr.lines().count(), 4);
    assert_eq!(
        uri.await.unwrap(),
        "/api/v1/namespaces/default/pods/pgset-0/exec?&stdout=true&stderr=true&container=postgres&command=psql&command=-c&command=select+1"
    );
}

#[tokio::test]
async fn a_failed_command_is_its_exit_code_and_stderr() {
    let frames = vec![
        frame(
            2,
            b"ERROR:  25006: cannot execute CREATE TABLE in a read-only transaction\nLOCATION:  PreventCommandIfReadOnly, utility.c:414\n",
        ),
        frame(
            3,
            br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [psql], exit code 1","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"1"}]}}"#,
        ),
    ];
    let (client, _) = serve_one(Script::Frames(frames)).await;
    let out = exec(client, Duration::from_secs(20))
        .run("pgset-1", "postgres", &argv(&["psql"]))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 1);
    assert!(out.stdout.is_empty());
    assert_eq!(pgset_verify::sql::sqlstate(&out.stderr), Some("25006"));
    assert_eq!(
        out.failure_summary(),
        "exit 1: ERROR: 25006: cannot execute CREATE TABLE in a read-only transaction LOCATION: PreventCommandIfReadOnly, utility.c:414"
    );
}

#[tokio::test]
async fn a_stream_without_status_is_an_error() {
    let (client, _) = serve_one(Script::Frames(vec![frame(1, b"partial")])).await;
    let err = exec(client, Duration::from_secs(20))
        .run("pgset-2", "postgres", &argv(&["getent", "hosts", "x"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ExecStream { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "exec `getent` in pod pgset-2: the stream closed without a status"
    );
}

#[tokio::test]
async fn a_command_that_never_ends_times_out() {
    let (client, _) = serve_one(Script::Hang).await;
    let err = exec(client, Duration::from_millis(500))
        .run("pgset-0", "postgres", &argv(&["psql"]))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "`psql` in pod pgset-0 did not finish within 500ms"
    );
}
