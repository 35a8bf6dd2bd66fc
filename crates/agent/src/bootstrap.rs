//! First copies and per-start preparation of a member's data directory: the checks that prove a
//! directory is this member's (or that the cluster never had data, before initdb), initdb for the
//! master, a base backup for a replica (built in `<pod>.bootstrap`, marked with its identity and
//! renamed into place only when complete), and the managed configuration.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use pgset_spec::contract::{self, env, secret};

use crate::datadir::{self, DataState};
use crate::identity::{self, Identity, MemberRef, Verdict};
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
    datadir::ensure_dir(&s.env.socket_dir, 0o700)?;
    datadir::write_atomic(
        &s.replication_passfile(),
        render::passfile_entry(contract::REPLICATION_USER, &pw).as_bytes(),
        0o600,
    )
    .map(drop)
}

/// A libpq connection string to the master for `pg_basebackup`.
/// With TLS it verifies the master against the CA and presents the replication certificate.
fn master_conninfo(s: &Settings, application_name: &str) -> String {
    let mut conninfo = format!(
        "host={} port={} user={} passfile={} application_name={} connect_timeout=5",
        render::conninfo_quote(&s.env.master_host),
        s.env.master_port,
        render::conninfo_quote(contract::REPLICATION_USER),
        render::conninfo_quote(&s.replication_passfile().display().to_string()),
        render::conninfo_quote(application_name),
    );
    if let Some(tls) = s.tls() {
        for (k, v) in tls.libpq_params() {
            conninfo.push_str(&format!(" {k}={}", render::conninfo_quote(&v)));
        }
    }
    conninfo
}

/// How this start gets its data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// This member's data is in place (identity proven).
    Existing,
    /// Ordinal 0 of a cluster that never had data: initdb.
    Initdb,
    /// A replica without data: a base backup from the master.
    BaseBackup,
}

/// Who this member is, for the identity checks: namespace, cluster, the cluster id from the
/// Secret's file, and the member name.
pub fn member_ref(s: &Settings) -> Result<MemberRef> {
    let path = s.secret_file(secret::CLUSTER_ID_KEY);
    let id = fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    if id.is_empty() {
        return Err(Error::DataDir {
            path,
            problem: format!(
                "the cluster id is missing; the Secret must carry the key `{}` (`deploy` adds it \
                 to an existing Secret without touching the passwords)",
                secret::CLUSTER_ID_KEY
            ),
        });
    }
    Ok(MemberRef {
        namespace: s.namespace().unwrap_or("local").to_string(),
        cluster: s.env.cluster.clone(),
        cluster_id: id,
        member: s.pod_name.clone(),
    })
}

/// Checks the data root: a usable directory that is not itself a data directory. Runs before
/// the write fence is taken, so a refused root gets nothing written into it.
pub fn check_data_root(s: &Settings) -> Result<()> {
    datadir::check_root(&s.env.data_root)?;
    if s.env.data_root.join("PG_VERSION").exists() {
        return Err(Error::Refused {
            path: s.env.data_root.clone(),
            problem: format!(
                "the data root is itself a PostgreSQL data directory (it has PG_VERSION), so a \
                 member directory inside it would nest one database in another; this happens when \
                 a volume is mounted at another cluster member's directory (for example after \
                 switching storage modes on one export). Point the volume at the export's root \
                 (members keep their data in <root>/<pod-name>) or at an empty directory; {} is \
                 left untouched",
                s.env.data_root.display()
            ),
        });
    }
    Ok(())
}

/// Checks the data root and this member's directory and decides how to start; changes nothing
/// but an interrupted first copy (never a complete data directory) and, on explicit opt-in, the
/// identity of an unmarked one.
pub fn inspect(s: &Settings, me: &MemberRef) -> Result<Plan> {
    check_data_root(s)?;
    datadir::discard_interrupted_bootstrap(&s.bootstrap_dir())?;
    let pgdata = s.pgdata();
    match datadir::state(&pgdata)? {
        DataState::Existing => {
            if let Some(pid) = datadir::live_postmaster(&pgdata) {
                return Err(Error::Refused {
                    path: pgdata,
                    problem: format!(
                        "a live postmaster (pid {pid}) already runs on this data directory; stop it first"
                    ),
                });
            }
            let sysid = identity::control_system_identifier(&pgdata)?;
            match identity::judge(identity::read(&pgdata)?.as_ref(), me, Some(sysid)) {
                Verdict::Ours => {}
                Verdict::Refused(why) => {
                    return Err(Error::Refused {
                        path: pgdata,
                        problem: why.to_string(),
                    });
                }
                Verdict::Unmarked if s.env.adopt_unmarked => {
                    identity::write(&pgdata, &Identity::new(me, sysid, "adopted"))?;
                    crate::warn!(
                        "{} had no identity; adopted it as member {} of {}/{} ({} is set)",
                        pgdata.display(),
                        me.member,
                        me.namespace,
                        me.cluster,
                        env::ADOPT_UNMARKED
                    );
                }
                Verdict::Unmarked => {
                    return Err(Error::Refused {
                        path: pgdata,
                        problem: format!(
                            "it has no {} identity (database system {sysid}), so nothing proves it is \
                             this member's: it was made by another tool or by a pgset version \
                             before data identities. If it is this member's data, set {}=true \
                             (spec: postgres.adoptUnmarkedData) once to adopt it; otherwise give \
                             this cluster its own directory. The directory is left untouched",
                            contract::IDENTITY_FILE,
                            env::ADOPT_UNMARKED
                        ),
                    });
                }
            }
            crate::info!(
                "starting on the existing data directory {} (database system {sysid}, no copy)",
                pgdata.display()
            );
            Ok(Plan::Existing)
        }
        DataState::Absent => match s.role {
            Role::Replica => Ok(Plan::BaseBackup),
            Role::Master => {
                let evidence = data_evidence(s);
                if evidence.is_empty() || s.env.allow_reinit {
                    if !evidence.is_empty() {
                        crate::warn!(
                            "initialising a new database although this cluster had data ({}); {} is set",
                            evidence.join(", "),
                            env::ALLOW_REINIT
                        );
                    }
                    Ok(Plan::Initdb)
                } else {
                    Err(Error::Refused {
                        path: pgdata,
                        problem: format!(
                            "the master's data directory is missing but this cluster had data ({}); \
                             an empty master would replace the cluster's database. Restore {} (was \
                             it moved, or does the volume point at another export path?); to start \
                             a new, empty database on purpose set {}=true (spec: \
                             postgres.allowReinit)",
                            evidence.join(", "),
                            s.pgdata().display(),
                            env::ALLOW_REINIT
                        ),
                    })
                }
            }
        },
    }
}

/// Signs that this cluster had data although ordinal 0's directory is absent: other members'
/// data directories (and kept copies) beside it in the data root.
pub fn data_evidence(s: &Settings) -> Vec<String> {
    let Ok(entries) = fs::read_dir(&s.env.data_root) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name
                .strip_suffix(".previous")
                .or_else(|| name.split_once(".stale-").map(|(b, _)| b))
                .unwrap_or(&name);
            let k = pgset_spec::ordinal_of(base)?;
            let is_member = base == format!("{}-{k}", s.env.cluster);
            (is_member && e.path().join("PG_VERSION").is_file())
                .then(|| e.path().display().to_string())
        })
        .collect();
    found.sort();
    found
}

/// The database system identifiers recorded by this cluster's other members (their identity
/// files in the data root): a new replica must copy a master of one of these.
pub fn recorded_systems(s: &Settings, me: &MemberRef) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(&s.env.data_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| identity::read(&e.path()).ok().flatten())
        .filter(|id| id.cluster_id == me.cluster_id && id.member != me.member)
        .map(|id| (id.member, id.system_identifier))
        .collect()
}

/// Makes the data directory the plan calls for (initdb or base backup into `<pod>.bootstrap`,
/// identity written, renamed into place only when complete), then the managed files.
/// Returns whether a first copy was made.
pub fn make(s: &Settings, bin: &PgBin, me: &MemberRef, plan: Plan) -> Result<bool> {
    let pgdata = s.pgdata();
    if s.role == Role::Replica {
        write_passfile(s)?;
    }
    let fresh = match plan {
        Plan::Existing => false,
        Plan::Initdb | Plan::BaseBackup => {
            let origin = if plan == Plan::Initdb {
                initdb(s, bin)?;
                "initdb"
            } else {
                base_backup(s, bin)?;
                "base backup"
            };
            let target = s.bootstrap_dir();
            let sysid = identity::control_system_identifier(&target)?;
            identity::write(&target, &Identity::new(me, sysid, origin))?;
            fs::rename(&target, &pgdata).map_err(io_err(format!(
                "move the finished copy into place at {}",
                pgdata.display()
            )))?;
            crate::info!(
                "{} is member {} of {}/{} (database system {sysid})",
                pgdata.display(),
                me.member,
                me.namespace,
                me.cluster
            );
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
        "first start of the master: initdb into {}",
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
        s.env.master_host,
        s.env.master_port,
        target.display(),
        s.slot()
    );
    let mut cmd = bin
        .command("pg_basebackup")
        .arg("-D")
        .arg(&target)
        .arg("-d")
        .arg(master_conninfo(s, &s.pod_name))
        .args([
            "-X",
            "stream",
            "-S",
            &s.slot(),
            "--checkpoint=fast",
            "--no-password",
        ]);
    if let Some(rate) = &s.env.basebackup_max_rate {
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
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    crate::info!(
        "base backup complete in {:.1} s",
        started.elapsed().as_secs_f32()
    );
    Ok(())
}

/// Writes what the agent owns inside PGDATA: the include line, `pgset.conf` for the role,
/// `standby.signal` on a replica (a replica without it would start as a second master, accepting
/// writes), and with TLS the managed pg_hba (the TLS files checked first).
pub fn write_managed_files(s: &Settings) -> Result<()> {
    let pgdata = s.pgdata();
    if let Some(tls) = s.tls() {
        tls.check()?;
        datadir::write_atomic(
            &pgdata.join(render::MANAGED_HBA),
            render::pg_hba_tls(&render::HbaAccess::of(s)).as_bytes(),
            0o600,
        )?;
    }
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
    datadir::ensure_dir(&s.env.socket_dir, 0o700)?;
    Ok(())
}
