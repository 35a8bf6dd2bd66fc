//! First copies and per-start preparation of a member's data directory: initdb for the primary,
//! a base backup for a replica (built in `<pod>.bootstrap` and renamed into place only when
//! complete), waiting for the master, the replica's slot, and the managed configuration.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use pgset_spec::contract::{self, env, secret};

use crate::cmd::HostCommand;
use crate::datadir::{self, DataState};
use crate::pgbin::PgBin;
use crate::render;
use crate::settings::{Role, Settings};
use crate::{Error, Result, io_err};

/// Reads a password file of the secret directory (one line; the trailing newline is not part of it).
pub fn read_password(s: &Settings, key: &str) -> Result<String> {
    let path = s.secret_file(key);
    let text = fs::read_to_string(&path).map_err(|e| Error::DataDir {
        path: path.clone(),
        problem: format!(
            "cannot read the password file ({e}); mount the Secret's `{key}` key in {}",
            env::SECRET_DIR
        ),
    })?;
    let pw = text.trim_end_matches(['\n', '\r']).to_string();
    if pw.is_empty() {
        return Err(Error::DataDir {
            path,
            problem: "the password file is empty".into(),
        });
    }
    Ok(pw)
}

/// Writes the replication passfile libpq reads (`passfile=` in the conninfo), mode 0600.
pub fn write_passfile(s: &Settings) -> Result<()> {
    let pw = read_password(s, secret::REPLICATION_PASSWORD_KEY)?;
    datadir::ensure_dir(&s.socket_dir, 0o700)?;
    datadir::write_atomic(
        &s.replication_passfile(),
        render::passfile_entry(contract::REPLICATION_USER, &pw).as_bytes(),
        0o600,
    )
    .map(drop)
}

/// A libpq connection string to the master for the replication tools.
fn master_conninfo(s: &Settings, application_name: &str) -> String {
    format!(
        "host={} port={} user={} passfile={} application_name={} connect_timeout=5",
        render::conninfo_quote(&s.master_host),
        s.master_port,
        render::conninfo_quote(contract::REPLICATION_USER),
        render::conninfo_quote(&s.replication_passfile().display().to_string()),
        render::conninfo_quote(application_name),
    )
}

/// Waits until the master accepts connections, with backoff and a log line per try; an error
/// after `s.master_wait`.
pub fn wait_for_master(s: &Settings, bin: &PgBin) -> Result<()> {
    let deadline = Instant::now() + s.master_wait;
    let mut delay = Duration::from_millis(250);
    let mut logged = false;
    loop {
        let probe = bin
            .command("pg_isready")
            .args([
                "-h",
                &s.master_host,
                "-p",
                &s.master_port.to_string(),
                "-t",
                "3",
            ])
            .quiet();
        let out = probe.output()?;
        if out.status.success() {
            if logged {
                crate::info!(
                    "the master {}:{} accepts connections",
                    s.master_host,
                    s.master_port
                );
            }
            return Ok(());
        }
        if Instant::now() + delay > deadline {
            return Err(Error::MasterTimeout {
                host: s.master_host.clone(),
                port: s.master_port,
                secs: s.master_wait.as_secs(),
                var: env::MASTER_WAIT_TIMEOUT,
            });
        }
        crate::info!(
            "waiting for the master {}:{} ({}); next try in {:.1} s",
            s.master_host,
            s.master_port,
            String::from_utf8_lossy(&out.stdout).trim(),
            delay.as_secs_f32()
        );
        logged = true;
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Makes sure this replica's slot exists on the master (it was dropped if the member was gone).
pub fn ensure_slot(s: &Settings, bin: &PgBin) -> Result<()> {
    bin.command("pg_receivewal")
        .args([
            "--create-slot",
            "--if-not-exists",
            "--slot",
            &s.slot(),
            "-d",
        ])
        .arg(master_conninfo(s, &s.pod_name))
        .run()
}

/// Drops this replica's slot on the master if it is there and idle (before a fresh copy).
fn drop_slot_if_idle(s: &Settings, bin: &PgBin) {
    let cmd = bin
        .command("pg_receivewal")
        .args(["--drop-slot", "--slot", &s.slot(), "-d"])
        .arg(master_conninfo(s, &s.pod_name));
    if let Err(e) = cmd.run() {
        crate::info!("no idle slot {} to drop before the copy ({e})", s.slot());
    }
}

/// Makes PGDATA ready to start: a first copy when there is none, then the managed files.
/// Returns whether a first copy was made.
pub fn prepare(s: &Settings, bin: &PgBin) -> Result<bool> {
    datadir::check_root(&s.data_root)?;
    datadir::discard_interrupted_bootstrap(&s.bootstrap_dir())?;
    let pgdata = s.pgdata();
    if s.role == Role::Replica {
        write_passfile(s)?;
    }
    let fresh = match datadir::state(&pgdata)? {
        DataState::Existing => {
            if let Some(pid) = datadir::live_postmaster(&pgdata) {
                return Err(Error::DataDir {
                    path: pgdata,
                    problem: format!(
                        "a live postmaster (pid {pid}) already runs on this data directory; stop it first"
                    ),
                });
            }
            crate::info!(
                "starting on the existing data directory {} (no copy)",
                pgdata.display()
            );
            if s.role == Role::Replica {
                wait_for_master(s, bin)?;
                ensure_slot(s, bin)?;
            }
            false
        }
        DataState::Absent => {
            match s.role {
                Role::Primary => initdb(s, bin)?,
                Role::Replica => {
                    wait_for_master(s, bin)?;
                    base_backup(s, bin)?;
                }
            }
            fs::rename(s.bootstrap_dir(), &pgdata).map_err(io_err(format!(
                "move the finished copy into place at {}",
                pgdata.display()
            )))?;
            true
        }
    };
    fs::set_permissions(&pgdata, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("set mode 0700 on {}", pgdata.display())))?;
    write_managed_files(s)?;
    Ok(fresh)
}

/// initdb into the bootstrap directory, with the superuser password from its file.
fn initdb(s: &Settings, bin: &PgBin) -> Result<()> {
    let target = s.bootstrap_dir();
    crate::info!(
        "first start of the primary: initdb into {}",
        target.display()
    );
    let pwfile = s.secret_file(secret::SUPERUSER_PASSWORD_KEY);
    read_password(s, secret::SUPERUSER_PASSWORD_KEY)?;
    bin.command("initdb")
        .arg("-D")
        .arg(&target)
        .arg(format!("--username={}", contract::SUPERUSER))
        .arg(format!("--pwfile={}", pwfile.display()))
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .run()?;
    datadir::write_atomic(
        &target.join("pg_hba.conf"),
        render::pg_hba().as_bytes(),
        0o600,
    )?;
    Ok(())
}

/// `pg_basebackup` from the master into the bootstrap directory, creating this member's slot.
fn base_backup(s: &Settings, bin: &PgBin) -> Result<()> {
    let target = s.bootstrap_dir();
    crate::info!(
        "first start of a replica: base backup from {}:{} into {} (slot {})",
        s.master_host,
        s.master_port,
        target.display(),
        s.slot()
    );
    drop_slot_if_idle(s, bin);
    let mut cmd = bin
        .command("pg_basebackup")
        .arg("-D")
        .arg(&target)
        .arg("-d")
        .arg(master_conninfo(s, &s.pod_name))
        .args([
            "-X",
            "stream",
            "-C",
            "-S",
            &s.slot(),
            "--checkpoint=fast",
            "--no-password",
        ]);
    if let Some(rate) = &s.basebackup_max_rate {
        cmd = cmd.arg(format!("--max-rate={rate}"));
    }
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        match cmd.run() {
            Ok(()) => break,
            Err(e) if attempt < 3 => {
                crate::warn!("base backup attempt {attempt} failed: {e}; retrying");
                datadir::discard_interrupted_bootstrap(&target)?;
                std::thread::sleep(Duration::from_secs(2 * attempt));
                drop_slot_if_idle(s, bin);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
    crate::info!(
        "base backup complete in {:.1} s",
        started.elapsed().as_secs_f32()
    );
    Ok(())
}

/// Writes what the agent owns inside PGDATA: the include line, `pgset.conf` for the role, and
/// `standby.signal` on a replica (a replica without it would start as a second primary).
pub fn write_managed_files(s: &Settings) -> Result<()> {
    let pgdata = s.pgdata();
    let conf = pgdata.join("postgresql.conf");
    let text = fs::read_to_string(&conf).map_err(io_err(format!("read {}", conf.display())))?;
    if let Some(new) = render::with_include(&text) {
        datadir::write_atomic(&conf, new.as_bytes(), 0o600)?;
    }
    datadir::write_atomic(
        &pgdata.join(render::MANAGED_CONF),
        render::managed_conf(s).as_bytes(),
        0o600,
    )?;
    if s.role == Role::Replica {
        datadir::write_atomic(&pgdata.join("standby.signal"), b"", 0o600)?;
    }
    datadir::ensure_dir(&s.socket_dir, 0o700)?;
    Ok(())
}

/// A psql command on this member's own socket, as the superuser.
pub fn local_psql(s: &Settings, bin: &PgBin) -> HostCommand {
    bin.command("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&s.socket_dir)
        .args([
            "-p",
            &s.port.to_string(),
            "-U",
            contract::SUPERUSER,
            "-d",
            "postgres",
        ])
}

/// On the primary: create the replication role if missing and set its password and the
/// superuser's from the secret (SQL on stdin; statement logging off for the session).
pub fn ensure_replication_role(s: &Settings, bin: &PgBin) -> Result<()> {
    let replication = read_password(s, secret::REPLICATION_PASSWORD_KEY)?;
    let superuser = read_password(s, secret::SUPERUSER_PASSWORD_KEY)?;
    local_psql(s, bin)
        .quiet()
        .stdin(render::role_passwords_sql(&replication, &superuser))
        .run()
}
