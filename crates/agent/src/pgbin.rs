//! Where the PostgreSQL binaries are: PGSET_PG_BIN_DIR, else `pg_config --bindir`, else PATH,
//! else the newest `/usr/lib/postgresql/<major>/bin` (Debian's layout).

use std::path::{Path, PathBuf};

use pgset_command::HostCommand;

use crate::{Error, Result};

/// The tools every member needs.
const REQUIRED: [&str; 6] = [
    "initdb",
    "postgres",
    "pg_basebackup",
    "pg_isready",
    "psql",
    "pg_receivewal",
];

/// The directory holding the PostgreSQL server binaries.
#[derive(Debug, Clone)]
pub struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// Finds the binaries, preferring `explicit` (PGSET_PG_BIN_DIR).
    pub fn find(explicit: Option<&Path>) -> Result<PgBin> {
        if let Some(dir) = explicit {
            return PgBin::check(dir.to_path_buf()).map_err(|missing| {
                Error::PgBinaries(format!(
                    "{} has no {missing} (PGSET_PG_BIN_DIR)",
                    dir.display()
                ))
            });
        }
        let mut tried = Vec::new();
        if let Ok(out) = HostCommand::new("pg_config").arg("--bindir").quiet().read() {
            let dir = PathBuf::from(out.trim());
            match PgBin::check(dir.clone()) {
                Ok(b) => return Ok(b),
                Err(_) => tried.push(format!("{} (pg_config --bindir)", dir.display())),
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if dir.join("initdb").is_file() {
                    if let Ok(b) = PgBin::check(dir.clone()) {
                        return Ok(b);
                    }
                    tried.push(dir.display().to_string());
                }
            }
        }
        if let Some(dir) = newest_debian_bindir(Path::new("/usr/lib/postgresql")) {
            match PgBin::check(dir.clone()) {
                Ok(b) => return Ok(b),
                Err(_) => tried.push(dir.display().to_string()),
            }
        }
        Err(Error::PgBinaries(format!(
            "no directory with {} (tried: {}); install the PostgreSQL server or set PGSET_PG_BIN_DIR",
            REQUIRED.join(", "),
            if tried.is_empty() {
                "pg_config, PATH, /usr/lib/postgresql/*/bin".to_string()
            } else {
                tried.join(", ")
            }
        )))
    }

    fn check(dir: PathBuf) -> std::result::Result<PgBin, &'static str> {
        match REQUIRED.iter().find(|t| !dir.join(t).is_file()) {
            Some(missing) => Err(missing),
            None => Ok(PgBin { dir }),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one tool.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A command running one tool.
    pub fn command(&self, name: &str) -> HostCommand {
        HostCommand::new(self.tool(name))
    }

    /// The PostgreSQL major of these binaries (`postgres -V`), refused with one clear error when
    /// the agent does not support it, before anything is initialised.
    pub fn supported_major(&self) -> Result<u32> {
        let out = self.command("postgres").arg("-V").quiet().read()?;
        let major = parse_major(&out).ok_or_else(|| {
            Error::PgBinaries(format!(
                "`postgres -V` printed `{}`, not a version",
                out.trim()
            ))
        })?;
        check_major(major)?;
        Ok(major)
    }
}

/// The major of `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → 15.
pub fn parse_major(version_output: &str) -> Option<u32> {
    let rest = version_output.split_once(')')?.1.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Refuses a major outside [`pgset_spec::contract::SUPPORTED_MAJORS`].
pub fn check_major(major: u32) -> Result<()> {
    let supported = pgset_spec::contract::SUPPORTED_MAJORS;
    if supported.contains(&major) {
        Ok(())
    } else {
        Err(Error::PgBinaries(format!(
            "PostgreSQL {major} is not supported: pgset supports majors {} to {} (it writes \
             settings such as wal_keep_size and max_slot_wal_keep_size that older servers reject); \
             use an image such as postgres:{}",
            supported.start(),
            supported.end(),
            supported.end()
        )))
    }
}

/// The `bin` directory of the highest major under `root` (`/usr/lib/postgresql/15/bin`).
pub fn newest_debian_bindir(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_major_wins_numerically() {
        let t = tempfile::tempdir().unwrap();
        for v in ["9", "15", "12", "notes"] {
            std::fs::create_dir_all(t.path().join(v).join("bin")).unwrap();
            std::fs::write(t.path().join(v).join("bin").join("initdb"), "").unwrap();
        }
        assert_eq!(
            newest_debian_bindir(t.path()),
            Some(t.path().join("15").join("bin"))
        );
    }

    #[test]
    fn majors() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(parse_major("garbage"), None);
        check_major(13).unwrap();
        check_major(18).unwrap();
        let e = check_major(12).unwrap_err().to_string();
        assert!(
            e.contains("PostgreSQL 12 is not supported") && e.contains("13 to 18"),
            "{e}"
        );
        assert!(check_major(19).is_err());
    }

    #[test]
    fn explicit_dir_without_tools_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let e = PgBin::find(Some(t.path())).unwrap_err().to_string();
        assert!(
            e.contains("has no initdb") && e.contains("PGSET_PG_BIN_DIR"),
            "{e}"
        );
    }
}
