//! Running a command in a pod's container through the API (`pods/exec` over a websocket) and
//! collecting its stdout, stderr and exit status.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::AsyncReadExt;

use pgset_spec::contract::POSTGRES_CONTAINER;

use crate::{Error, Result};

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Its exit code (0 on success).
    pub exit_code: i32,
}

impl ExecOutput {
    /// True when it exited 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// `exit N: <stderr>` for messages.
    pub fn failure_summary(&self) -> String {
        let stderr = crate::report::one_line(&self.stderr);
        if stderr.is_empty() {
            format!("exit {}", self.exit_code)
        } else {
            format!("exit {}: {stderr}", self.exit_code)
        }
    }
}

/// The exit code carried by the status object the API server sends on the exec's status channel:
/// `Success` → 0, `NonZeroExitCode` → the code in `details.causes[reason=ExitCode]`.
pub fn exit_code_of(status: &Status) -> Option<i32> {
    if status.status.as_deref() == Some("Success") {
        return Some(0);
    }
    status
        .details
        .as_ref()?
        .causes
        .as_ref()?
        .iter()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref()?.parse().ok())
}

/// The container to exec into: `postgres` when the pod has it, else the first container.
pub fn container_of(pod: &Pod) -> Option<String> {
    let containers = &pod.spec.as_ref()?.containers;
    containers
        .iter()
        .find(|c| c.name == POSTGRES_CONTAINER)
        .or_else(|| containers.first())
        .map(|c| c.name.clone())
}

/// Runs commands in the pods of one namespace.
#[derive(Clone)]
pub struct PodExec {
    pods: Api<Pod>,
    timeout: Duration,
}

impl PodExec {
    /// Commands in `pods`' namespace, each bounded by `timeout`.
    pub fn new(pods: Api<Pod>, timeout: Duration) -> PodExec {
        PodExec { pods, timeout }
    }

    /// Runs `argv` in `container` of `pod` and waits for it to finish. A command that ran and
    /// exited non-zero is `Ok` with its exit code; only failing to run it is an error.
    pub async fn run(&self, pod: &str, container: &str, argv: &[String]) -> Result<ExecOutput> {
        let what = || argv.first().cloned().unwrap_or_default();
        let params = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true)
            .max_stdout_buf_size(64 * 1024)
            .max_stderr_buf_size(64 * 1024);
        let work = async {
            let mut process =
                self.pods
                    .exec(pod, argv.to_vec(), &params)
                    .await
                    .map_err(|source| Error::Exec {
                        pod: pod.to_string(),
                        command: what(),
                        source,
                    })?;
            let status = process.take_status();
            let mut stdout = process.stdout();
            let mut stderr = process.stderr();
            let read_out = async {
                let mut buf = Vec::new();
                if let Some(r) = stdout.as_mut() {
                    let _ = r.read_to_end(&mut buf).await;
                }
                buf
            };
            let read_err = async {
                let mut buf = Vec::new();
                if let Some(r) = stderr.as_mut() {
                    let _ = r.read_to_end(&mut buf).await;
                }
                buf
            };
            let (out, err) = tokio::join!(read_out, read_err);
            let status = match status {
                Some(s) => s.await,
                None => None,
            };
            drop(stdout);
            drop(stderr);
            process.join().await.map_err(|e| Error::ExecStream {
                pod: pod.to_string(),
                command: what(),
                message: e.to_string(),
            })?;
            let exit_code =
                status
                    .as_ref()
                    .and_then(exit_code_of)
                    .ok_or_else(|| Error::ExecStream {
                        pod: pod.to_string(),
                        command: what(),
                        message: match &status {
                            Some(s) => format!(
                                "no exit code in status: {}",
                                s.message.clone().unwrap_or_default()
                            ),
                            None => "the stream closed without a status".into(),
                        },
                    })?;
            Ok(ExecOutput {
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).into_owned(),
                exit_code,
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("`{}` in pod {pod}", what()),
                after: self.timeout,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_status_objects() {
        // The status objects the API server sends on the exec status channel.
        let ok: Status = serde_json::from_str(r#"{"metadata":{},"status":"Success"}"#).unwrap();
        assert_eq!(exit_code_of(&ok), Some(0));
        let failed: Status = serde_json::from_str(
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [psql], exit code 1","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"1"}]}}"#,
        )
        .unwrap();
        assert_eq!(exit_code_of(&failed), Some(1));
        let other: Status = serde_json::from_str(
            r#"{"metadata":{},"status":"Failure","message":"container not found (\"postgres\")","reason":"InternalError"}"#,
        )
        .unwrap();
        assert_eq!(exit_code_of(&other), None);
    }

    #[test]
    fn prefers_the_postgres_container() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "sidecar"}, {"name": "postgres"}]}
        }))
        .unwrap();
        assert_eq!(container_of(&pod).as_deref(), Some("postgres"));
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "db"}]}
        }))
        .unwrap();
        assert_eq!(container_of(&pod).as_deref(), Some("db"));
    }
}
