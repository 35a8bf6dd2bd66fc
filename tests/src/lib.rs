//! Shared helpers of the cross-crate tests: where the workspace is, and how a test that needs an
//! environment (PostgreSQL binaries, qemu, a live cluster) skips or fails.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The shared fixtures directory (`tests/fixtures`).
pub fn fixtures() -> PathBuf {
    workspace_root().join("tests").join("fixtures")
}

/// True when the run must not skip tests for a missing local tool: set in CI (`CI=true`, whose
/// `.ci/run` installs every tool) and by `cargo xtask test --require-tools`.
pub fn tools_required() -> bool {
    std::env::var_os("PGSET_REQUIRE_TOOLS").is_some_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Prints why a test is skipped where the test harness does not capture it, so the reason shows
/// in every run's output, not only for failing tests.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Called when a locally installable tool is missing: fails the test where tools are required
/// (CI), else prints why the test is skipped. Returns normally only when the test should skip.
pub fn missing_tool(test: &str, reason: &str) {
    if tools_required() {
        panic!(
            "{test}: {reason} (this run requires every test tool; see .ci/run for the install steps)"
        );
    }
    skip(test, reason);
}

/// The kubeconfig a live-cluster test should use, or `None` after printing why it is skipped.
/// Live tests never run against a cluster that was not named through `KUBECONFIG`.
pub fn live_kubeconfig(test: &str) -> Option<PathBuf> {
    match std::env::var_os("KUBECONFIG") {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            if p.exists() {
                Some(p)
            } else {
                panic!("{test}: KUBECONFIG={} does not exist", p.display());
            }
        }
        _ => {
            skip(test, "needs a live cluster; set KUBECONFIG to run it");
            None
        }
    }
}

/// Locates a binary on PATH.
pub fn tool(name: &str) -> Option<PathBuf> {
    which::which(name).ok()
}
