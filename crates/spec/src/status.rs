//! The status summary shared by `status` against a cluster and against a local set.

use serde::{Deserialize, Serialize};

/// A cluster (or local set) at a glance: what `status` prints first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Cluster name.
    pub cluster: String,
    /// The cluster id (the Secret's `cluster-id`; a local set's `<dir>/secret/cluster-id`).
    pub cluster_id: Option<String>,
    /// PostgreSQL's database system identifier (the master's).
    pub system_identifier: Option<String>,
    /// PostgreSQL's version (the master's `server_version`).
    pub postgres_version: Option<String>,
    /// The master member.
    pub master: String,
    /// When the master's postmaster started.
    pub master_started_at: Option<String>,
    /// Seconds since then.
    pub master_uptime_s: Option<f64>,
    /// Members of the set that answer ready.
    pub members_ready: usize,
    /// Members wanted (the StatefulSet's replicas; a local set's membership file).
    pub members_total: usize,
    /// The master's current WAL position.
    pub master_lsn: Option<String>,
    /// The master's timeline.
    pub timeline: Option<i64>,
}

/// A physical slot on the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Its name.
    pub slot: String,
    /// Whether a standby streams from it now.
    pub active: bool,
    /// `wal_status`.
    pub wal_status: Option<String>,
    /// WAL it retains, in bytes (the master's LSN minus the slot's restart LSN).
    pub retained_bytes: Option<i64>,
}

impl Summary {
    /// The summary's two lines, as `status` prints them above the members.
    pub fn lines(&self) -> String {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        format!(
            "cluster {}  cluster id {}  system identifier {}  PostgreSQL {}\n\
             master {} up {}  ready {}/{}  LSN {}  timeline {}\n",
            self.cluster,
            or(&self.cluster_id),
            or(&self.system_identifier),
            or(&self.postgres_version),
            self.master,
            self.master_uptime_s.map_or("-".into(), duration),
            self.members_ready,
            self.members_total,
            or(&self.master_lsn),
            self.timeline.map_or("-".into(), |t| t.to_string())
        )
    }
}

/// A byte count in binary units (`512 B`, `1.5 MiB`).
pub fn bytes(b: i64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// A duration as a person reads it (`4.2s`, `3m7s`, `2h5m`, `1d3h`).
pub fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        s if s >= 86400 => format!("{}d{}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{secs:.1}s"),
    }
}

/// The longest reason a status line shows of a member's termination message.
pub const REASON_MAX_CHARS: usize = 200;

/// The one-line reason of a termination message (a pod's, or a local member's termination
/// log): its first non-empty line, at most [`REASON_MAX_CHARS`] characters (an older agent may
/// have left a log tail there).
pub fn one_line_reason(message: &str) -> Option<String> {
    let line = message.lines().map(str::trim).find(|l| !l.is_empty())?;
    if line.chars().count() <= REASON_MAX_CHARS {
        return Some(line.to_string());
    }
    let cut: String = line.chars().take(REASON_MAX_CHARS - 1).collect();
    Some(format!("{cut}…"))
}

/// A replica further behind the master than `bound` allows (pure): `bytes_behind` sent to it but
/// not yet replayed, `seconds` of the master's `replay_lag`. Names the bound.
pub fn lag_warning(
    name: &str,
    bytes_behind: Option<i64>,
    seconds: Option<f64>,
    bound: &crate::LagBound,
) -> Option<String> {
    let over_bytes = bytes_behind.is_some_and(|b| b > 0 && b as u64 > bound.bytes);
    let over_seconds = seconds.is_some_and(|s| s > bound.seconds as f64);
    if !over_bytes && !over_seconds {
        return None;
    }
    let mut behind = Vec::new();
    if let Some(b) = bytes_behind {
        behind.push(bytes(b));
    }
    if let Some(s) = seconds {
        behind.push(format!("{s:.1} s"));
    }
    Some(format!(
        "{name} is {} behind the master, above the bound of {} / {} s \
         (replication.maxReplicaLag): it serves stale reads",
        behind.join(" / "),
        bytes(bound.bytes as i64),
        bound.seconds
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reads_as_two_lines_with_unknowns_as_dashes() {
        let mut s = Summary {
            cluster: "pgset".into(),
            cluster_id: Some("c0ffee".into()),
            system_identifier: Some("7300000000000000001".into()),
            postgres_version: Some("15.14".into()),
            master: "pgset-0".into(),
            master_started_at: None,
            master_uptime_s: Some(187.0),
            members_ready: 3,
            members_total: 3,
            master_lsn: Some("0/3000148".into()),
            timeline: Some(1),
        };
        assert_eq!(
            s.lines(),
            "cluster pgset  cluster id c0ffee  system identifier 7300000000000000001  PostgreSQL 15.14\n\
             master pgset-0 up 3m7s  ready 3/3  LSN 0/3000148  timeline 1\n"
        );
        s.cluster_id = None;
        s.master_uptime_s = None;
        s.timeline = None;
        assert!(s.lines().contains("cluster id -  system"), "{}", s.lines());
        assert!(
            s.lines()
                .contains("up -  ready 3/3  LSN 0/3000148  timeline -"),
            "{}",
            s.lines()
        );
    }

    #[test]
    fn sizes_and_durations_in_the_units_people_read() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(4.25), "4.2s");
        assert_eq!(duration(3700.0), "1h1m");
        assert_eq!(duration(90000.0), "1d1h");
    }
}
