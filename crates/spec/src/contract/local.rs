//! Local mode's files that the launcher (pgset-local) and the agent both read or write: the
//! agent's pid file and the membership file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The local-mode pid file of a member's agent, `<data root>/<member>.agent.pid`: written by
/// the agent, read by the launcher to find and stop it.
pub fn agent_pid_file(data_root: &Path, member: &str) -> PathBuf {
    data_root.join(format!("{member}.agent.pid"))
}

/// The membership file's text: one member per line (written by the launcher).
pub fn members_text<S: AsRef<str>>(members: impl IntoIterator<Item = S>) -> String {
    members
        .into_iter()
        .map(|m| format!("{}\n", m.as_ref()))
        .collect()
}

/// The members listed in the membership file (read by the master's agent and local status);
/// `None` when it cannot be read.
pub fn read_members(path: &Path) -> Option<HashSet<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_file_round_trip_and_blank_lines() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("members");
        std::fs::write(&f, members_text(["pgset-0", "pgset-1"])).unwrap();
        assert_eq!(
            read_members(&f).unwrap(),
            HashSet::from(["pgset-0".to_string(), "pgset-1".to_string()])
        );
        std::fs::write(&f, "pgset-0\n  pgset-1 \n\n").unwrap();
        let m = read_members(&f).unwrap();
        assert!(m.contains("pgset-1") && m.len() == 2, "{m:?}");
        assert!(read_members(&t.path().join("none")).is_none());
    }

    #[test]
    fn the_pid_file_sits_beside_the_member() {
        assert_eq!(
            agent_pid_file(Path::new("/d"), "pgset-1"),
            Path::new("/d/pgset-1.agent.pid")
        );
    }
}
