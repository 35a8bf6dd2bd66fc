//! Running as the postgres user: in a pod the agent already is uid 999; started as root (local
//! mode on a host) it switches to the `postgres` system user before touching any data.

use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};

use crate::{Error, Result};

/// The system user PostgreSQL runs as on a host.
pub const POSTGRES_USER: &str = "postgres";

/// The `postgres` system user, when the host has one.
pub fn postgres_user() -> Result<User> {
    User::from_name(POSTGRES_USER)
        .map_err(|e| Error::Privilege(format!("looking up user `{POSTGRES_USER}`: {e}")))?
        .ok_or_else(|| {
            Error::Privilege(format!(
                "there is no `{POSTGRES_USER}` user on this host; install the PostgreSQL server package"
            ))
        })
}

/// When running as root, becomes the `postgres` user for good (groups, gid, then uid).
/// Returns the user switched to, or `None` when not root.
pub fn drop_root() -> Result<Option<User>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = postgres_user()?;
    let gid: Gid = user.gid;
    setgroups(&[gid]).map_err(|e| Error::Privilege(format!("setgroups: {e}")))?;
    setgid(gid).map_err(|e| Error::Privilege(format!("setgid {gid}: {e}")))?;
    setuid(user.uid).map_err(|e| Error::Privilege(format!("setuid {}: {e}", user.uid)))?;
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(Error::Privilege(
            "root privileges could be regained after dropping them".into(),
        ));
    }
    Ok(Some(user))
}
