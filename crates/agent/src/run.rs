//! `pgset-agent run`: settings from the env contract, the postgres user, the health endpoint,
//! the data directory, then supervising postgres until it exits (or copying again when a replica
//! fell too far behind).

use std::sync::Arc;

use pgset_spec::contract;

use crate::bootstrap;
use crate::datadir;
use crate::health::{self, Health};
use crate::kube_api::PodApi;
use crate::pgbin::PgBin;
use crate::privilege;
use crate::settings::{Mode, Settings};
use crate::supervise::{Outcome, ShutdownSignals, supervise};
use crate::{Error, Result};

/// Exit code after a shutdown signal arrived before postgres ran.
const EXIT_SIGTERM: i32 = 143;

/// Runs the member; returns the process exit code.
pub async fn run() -> Result<i32> {
    if let Some(user) = privilege::drop_root()? {
        crate::info!(
            "started as root: running as user `{}` (uid {})",
            user.name,
            user.uid
        );
    }
    let s = Settings::from_env()?;
    crate::info!(
        "member {} of cluster {}: {} (ordinal {}), data {}",
        s.pod_name,
        s.cluster,
        s.role.label(),
        s.ordinal,
        s.pgdata().display()
    );
    let bin = PgBin::find(s.pg_bin_dir.as_deref())?;
    crate::info!("PostgreSQL binaries in {}", bin.dir().display());
    datadir::check_root(&s.data_root)?;
    let api = match s.mode {
        Mode::Kubernetes => {
            let ns = s.namespace.clone().unwrap_or_default();
            Some(PodApi::in_cluster(&ns, &s.cluster)?)
        }
        Mode::Local => None,
    };
    let health = Health::new();
    if let Some(addr) = s.health_addr {
        health::serve(addr, health.clone()).await?;
    }
    let mut signals = ShutdownSignals::install()?;
    let pid_file = (s.mode == Mode::Local).then(|| s.agent_pid_file());
    if let Some(f) = &pid_file {
        datadir::write_atomic(f, format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
    }
    let result = member_loop(&s, &bin, &health, api.as_ref(), &mut signals).await;
    if let Some(f) = &pid_file {
        let _ = std::fs::remove_file(f);
    }
    result
}

async fn member_loop(
    s: &Settings,
    bin: &PgBin,
    health: &Arc<Health>,
    api: Option<&PodApi>,
    signals: &mut ShutdownSignals,
) -> Result<i32> {
    loop {
        health.set_live(true, "preparing the data directory");
        let (s2, b2) = (s.clone(), bin.clone());
        let prepare = tokio::task::spawn_blocking(move || bootstrap::prepare(&s2, &b2));
        tokio::select! {
            r = prepare => {
                r.map_err(|e| Error::Local(format!("preparing the data directory: {e}")))??;
            }
            _ = signals.recv() => {
                crate::info!("shutdown requested while preparing the data directory; stopping the copy");
                for pid in datadir::processes_using(&s.bootstrap_dir()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
                }
                return Ok(EXIT_SIGTERM);
            }
        }
        match supervise(s, bin, health, api, signals).await? {
            Outcome::Exited(code) => return Ok(code),
            Outcome::Reclone => {
                let kept = datadir::move_aside(&s.pgdata())?;
                crate::warn!(
                    "moved the data directory that can no longer follow the master to {} (kept, not deleted); \
                     copying the master again",
                    kept.display()
                );
            }
        }
    }
}

/// The env-contract variables, for `--help`.
pub fn env_help() -> String {
    use contract::env::*;
    [
        MODE,
        POD_NAME,
        NAMESPACE,
        CLUSTER,
        DATA_ROOT,
        MASTER_HOST,
        MASTER_PORT,
        PORT,
        LISTEN_ADDRESSES,
        SOCKET_DIR,
        SECRET_DIR,
        HEALTH_ADDR,
        PG_BIN_DIR,
        MEMBERS_FILE,
        MASTER_WAIT_TIMEOUT,
        BASEBACKUP_MAX_RATE,
    ]
    .join(", ")
}
