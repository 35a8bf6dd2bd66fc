//! Whether a replica can follow its master, decided from PostgreSQL's own state: the master's
//! system identifier and timeline, the `wal_status` of the replica's slot, and the oldest WAL
//! segment the master still has against the one the replica needs. Never from log text.

use crate::pg::MasterView;

/// The verdict on a replica and its master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// The master has what this replica needs (or nothing says otherwise).
    Yes,
    /// The master is another database system: the replica must not follow it.
    Mismatch(String),
    /// Same system, but the master no longer has the WAL this replica needs: only a new copy helps.
    NeedsNewCopy(String),
}

/// Judges a replica (its data's system identifier and timeline) against the master's view.
pub fn judge(own_sysid: u64, own_timeline: i64, m: &MasterView) -> Follow {
    if m.system_identifier != own_sysid {
        return Follow::Mismatch(format!(
            "the master is database system {} but this replica's data is {own_sysid}: the master \
             was initialised anew or is another cluster's",
            m.system_identifier
        ));
    }
    if own_timeline > m.timeline && m.timeline > 0 {
        return Follow::NeedsNewCopy(format!(
            "this replica is on timeline {own_timeline}, ahead of the master's {}",
            m.timeline
        ));
    }
    if m.slot_wal_status.as_deref() == Some("lost") {
        return Follow::NeedsNewCopy(
            "the master invalidated this replica's slot (wal_status lost: it held back more WAL \
             than max_slot_wal_keep_size)"
                .into(),
        );
    }
    if let (Some(needed), Some(oldest)) = (&m.needed_segment, &m.oldest_segment)
        && needed < oldest
    {
        return Follow::NeedsNewCopy(format!(
            "this replica needs WAL segment …{needed} but the oldest the master has is …{oldest}"
        ));
    }
    Follow::Yes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> MasterView {
        MasterView {
            system_identifier: 7,
            timeline: 1,
            slot_wal_status: Some("reserved".into()),
            oldest_segment: Some("0000000000000005".into()),
            needed_segment: Some("0000000000000007".into()),
            database_bytes: 1 << 20,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(judge(7, 1, &view()), Follow::Yes);
        assert!(
            matches!(judge(8, 1, &view()), Follow::Mismatch(m) if m.contains("initialised anew"))
        );

        let mut lost = view();
        lost.slot_wal_status = Some("lost".into());
        assert!(
            matches!(judge(7, 1, &lost), Follow::NeedsNewCopy(m) if m.contains("wal_status lost"))
        );

        let mut gone = view();
        gone.needed_segment = Some("0000000000000004".into());
        assert!(matches!(judge(7, 1, &gone), Follow::NeedsNewCopy(m) if m.contains("oldest")));

        let mut ahead = view();
        ahead.timeline = 1;
        assert!(matches!(judge(7, 2, &ahead), Follow::NeedsNewCopy(m) if m.contains("timeline 2")));

        let mut unknown = view();
        unknown.slot_wal_status = None;
        unknown.needed_segment = None;
        assert_eq!(
            judge(7, 1, &unknown),
            Follow::Yes,
            "no evidence is not a verdict"
        );
    }
}
