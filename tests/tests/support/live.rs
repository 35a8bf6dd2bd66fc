//! Shared by the live-cluster tests: running `cargo xtask` with a spec file, and judging a
//! verify report.

#![allow(dead_code)]

use std::path::Path;

use pgset_tests::workspace_root;
use pgset_verify::{Report, Verdict, names};

/// What one `cargo xtask` run printed and how it ended.
pub struct XtaskRun {
    /// Standard output.
    pub stdout: String,
    /// Standard error (progress lines).
    pub stderr: String,
    /// Exit status 0.
    pub ok: bool,
}

/// `cargo xtask <args> --config <spec file>` in the workspace. Progress is echoed after the run
/// so a failing test shows it.
pub fn xtask(spec_file: &Path, args: &[&str]) -> XtaskRun {
    let mut argv: Vec<String> = vec!["xtask".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.push("--config".into());
    argv.push(spec_file.display().to_string());
    eprintln!("$ cargo {}", argv.join(" "));
    let out = duct::cmd("cargo", &argv)
        .dir(workspace_root())
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .expect("run cargo xtask");
    let run = XtaskRun {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    };
    eprint!("{}", run.stderr);
    run
}

/// Every check reported, in order, and passed.
pub fn assert_all_passed(report: &Report, run: &str) {
    let summary: Vec<String> = report
        .checks
        .iter()
        .map(|c| format!("{} {:?}: {}", c.name, c.verdict, c.message))
        .collect();
    assert_eq!(
        report
            .checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        names::ALL,
        "{run}: every check reported, in order"
    );
    assert!(
        report.checks.iter().all(|c| c.verdict == Verdict::Pass),
        "{run}: {summary:#?}"
    );
    assert!(report.passed, "{run}");
    assert!(report.warnings.is_empty(), "{run}: {:?}", report.warnings);
}

/// Deletes the test's namespace, then re-raises the scenario's panic, if it had one, so the
/// clean-up runs whether the scenario passed or not.
pub async fn finish(
    test: &str,
    namespaces: &kube::Api<k8s_openapi::api::core::v1::Namespace>,
    ns: &str,
    outcome: Result<(), tokio::task::JoinError>,
) {
    if let Err(e) = namespaces
        .delete(ns, &kube::api::DeleteParams::default())
        .await
    {
        eprintln!("{test}: could not delete namespace {ns}: {e}");
    }
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("{test}: {e}"),
        }
    }
}

/// Creates the test's namespace; returns the namespaces API for [`finish`].
pub async fn create_namespace(
    client: &kube::Client,
    ns: &str,
) -> kube::Api<k8s_openapi::api::core::v1::Namespace> {
    let namespaces = kube::Api::all(client.clone());
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    namespaces
        .create(&kube::api::PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("create namespace {ns}: {e}"));
    namespaces
}
