//! The Secret is the source of truth for the passwords: after its superuser password changes
//! (as after `down --purge --yes` and a new `up`), the primary's next start makes the new one
//! work and the old one fail, on real PostgreSQL.

#[path = "support/local.rs"]
mod support;

use std::time::Duration;

use pgset_local as local;
use pgset_spec::contract::secret;
use support::{TestSet, pg_or_skip};

/// `SELECT 1` over TCP as the superuser with `password` (passed in the environment, never as an
/// argument): true when the login works.
fn tcp_login(t: &TestSet, password: &str) -> bool {
    let bin = pgset_agent::pgbin::PgBin::find(None).expect("PostgreSQL binaries");
    bin.command("psql")
        .args(["-X", "-A", "-t", "-q", "-w", "-h", "127.0.0.1", "-p"])
        .arg(t.port(0).to_string())
        .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
        .env("PGPASSWORD", password)
        .quiet()
        .output()
        .map(|o| o.status.success() && o.stdout.trim() == "1")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_superuser_password_takes_effect_on_the_next_start() {
    if pg_or_skip("a_changed_superuser_password_takes_effect_on_the_next_start").is_none() {
        return;
    }
    let t = TestSet::new(1, 26650);
    local::up(&t.opts).await.expect("up");
    let file = t.dir().join("secret").join(secret::SUPERUSER_PASSWORD_KEY);
    let old = std::fs::read_to_string(&file).expect("superuser password file");
    let old = old.trim_end();
    assert!(tcp_login(&t, old), "the generated password logs in");

    let new = "a-new-superuser-password-'quoted'";
    // Written in place: the file keeps its owner and mode 0600.
    std::fs::write(&file, new).expect("rewrite the password file");
    assert!(
        local::stop_member(t.dir(), "pgset-0", Duration::from_secs(60))
            .await
            .expect("stop the primary")
    );
    let report = local::up(&t.opts).await.expect("up again");
    assert_eq!(report.started, ["pgset-0"]);
    support::wait_until("the new password logs in", Duration::from_secs(60), || {
        tcp_login(&t, new)
    });
    assert!(!tcp_login(&t, old), "the old password no longer works");
    assert!(
        !t.log(0).contains(new),
        "the password must not reach the member's log"
    );
}
