//! `rotate-certs --local DIR --ca`: a new CA for a `--tls` set, with overlap. The new CA joins
//! the trust bundle `DIR/tls/ca.crt` first; the server and replication certificates are
//! reissued by it only once every running member's agent reports (its `/status`,
//! [`contract::tls::LOADED_DETAIL`]) that its PostgreSQL loaded that bundle; the old CA leaves
//! the bundle only once every running member reports the new CA's certificates loaded, so no
//! certificate of the old CA is in use any more. No member or client holding the bundle loses
//! trust at any moment. A stopped member reads the files when it starts and is not waited for.
//! A run that stopped (a member that did not catch up in time) is resumed by the same command.

use std::path::Path;
use std::time::{Duration, Instant};

use pgset_agent::health;
use pgset_spec::contract;

use crate::{
    LocalSet, Result, agent_pid, give_to_postgres, known_ordinals, local_err, read_set, tls_dir,
};

/// How long each step waits for every running member by default.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Rotates the CA of the `--tls` set in `dir` with overlap (the module's three steps), each
/// wait bounded by `step_timeout`; one line per file written and per step every member
/// reached. A set without TLS is refused with nothing changed; a member that does not catch up
/// stops the run with an error naming it, the files left at a step every member can serve
/// (running the command again resumes).
pub async fn rotate_ca(dir: &Path, step_timeout: Duration) -> Result<Vec<String>> {
    let set = read_set(dir)?;
    let tls = tls_dir(dir);
    if !tls.exists() {
        return Err(local_err(format!(
            "{} holds a set without TLS: there is no CA to rotate (make a set with `{} local up --tls`)",
            dir.display(),
            contract::program_name()
        )));
    }
    let tls_err = |e: pgset_tls::Error| local_err(format!("the set's TLS files: {e}"));
    let mut lines = Vec::new();
    let note = |lines: &mut Vec<String>, made: Vec<String>| {
        lines.extend(made);
    };
    let state = pgset_tls::ca_rotation(&tls).map_err(tls_err)?;
    if state == (pgset_tls::CaRotation::Settled { others: 0 })
        || state == pgset_tls::CaRotation::Begun
    {
        // 1: the new CA joins the bundle (kept when a stopped run began it).
        let made =
            pgset_tls::begin_ca_rotation(&tls, &set.name, pgset_tls::now()).map_err(tls_err)?;
        if made.is_empty() {
            note(
                &mut lines,
                vec!["resuming the CA rotation begun earlier".into()],
            );
        }
        note(&mut lines, made);
        hand_over(&tls)?;
        let want = wanted(&tls)?;
        wait_loaded(
            dir,
            &set,
            &want,
            false,
            step_timeout,
            "the trust bundle with the new CA",
        )
        .await?;
        note(
            &mut lines,
            vec!["every running member trusts the new CA".into()],
        );
        // 2: the certificates are the new CA's.
        let made = pgset_tls::switch_to_next_ca(&tls, &pgset_tls::local_names(), pgset_tls::now())
            .map_err(tls_err)?;
        note(&mut lines, made);
        hand_over(&tls)?;
    } else {
        note(
            &mut lines,
            vec![
                "resuming the CA rotation begun earlier: the certificates are the new CA's".into(),
            ],
        );
    }
    let want = wanted(&tls)?;
    wait_loaded(
        dir,
        &set,
        &want,
        true,
        step_timeout,
        "the new CA's certificates",
    )
    .await?;
    note(
        &mut lines,
        vec!["every running member serves the new CA's certificates".into()],
    );
    // 3: no certificate of the old CA is in use: it leaves the bundle.
    let made = pgset_tls::retire_old_cas(&tls).map_err(tls_err)?;
    note(&mut lines, made);
    hand_over(&tls)?;
    let want = wanted(&tls)?;
    wait_loaded(
        dir,
        &set,
        &want,
        true,
        step_timeout,
        "the trust bundle without the old CA",
    )
    .await?;
    note(
        &mut lines,
        vec!["every running member trusts the new CA alone".into()],
    );
    Ok(lines)
}

/// Every file of the TLS directory is the postgres user's (as `local up --tls` leaves them).
fn hand_over(tls: &Path) -> Result<()> {
    for f in std::fs::read_dir(tls)
        .map_err(|e| local_err(format!("cannot read {}: {e}", tls.display())))?
    {
        let f = f.map_err(|e| local_err(format!("cannot read {}: {e}", tls.display())))?;
        give_to_postgres(&f.path())?;
    }
    Ok(())
}

/// What a member that loaded the files as they are now reports.
struct Wanted {
    ca_bundle: String,
    certs: String,
}

fn wanted(tls: &Path) -> Result<Wanted> {
    let read = |f: &str| {
        std::fs::read(tls.join(f))
            .map_err(|e| local_err(format!("cannot read {}: {e}", tls.join(f).display())))
    };
    let mut certs = read(contract::tls::SERVER_CERT)?;
    certs.extend(read(contract::tls::REPLICATION_CERT)?);
    Ok(Wanted {
        ca_bundle: pgset_tls::digest(&read(contract::tls::CA_CERT)?),
        certs: pgset_tls::digest(&certs),
    })
}

/// Waits until every member whose agent runs reports the bundle of `want` loaded (and its
/// certificates with `certs`), asking each agent's `/status`; past `timeout`, an error naming
/// the members that have not caught up. A member whose agent does not answer has not.
async fn wait_loaded(
    dir: &Path,
    set: &LocalSet,
    want: &Wanted,
    certs: bool,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut behind = Vec::new();
        for k in known_ordinals(dir, set) {
            let member = set.member(k);
            if agent_pid(dir, &member).is_none() {
                continue;
            }
            let loaded = health::get(set.health_addr(k), contract::HEALTH_STATUS_PATH)
                .await
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .map(|h| h["postgres"][contract::tls::LOADED_DETAIL].clone());
            let has = |key: &str, value: &str| {
                loaded.as_ref().and_then(|l| l[key].as_str()) == Some(value)
            };
            let caught_up = has(contract::tls::LOADED_CA_BUNDLE, &want.ca_bundle)
                && (!certs || has(contract::tls::LOADED_CERTS, &want.certs));
            if !caught_up {
                behind.push(member);
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(local_err(format!(
                "{} did not load {what} within {}s (their agents' /status names other files; see `{} local status` and their logs); the files are left where every member is served and trusted: run the same command again to resume",
                behind.join(", "),
                timeout.as_secs(),
                contract::program_name()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
