//! The agent's log: one line per event on stderr, with a UTC timestamp in the format postgres
//! uses, prefixed so it stands out from postgres's own lines.

use std::time::{SystemTime, UNIX_EPOCH};

/// Writes one informational line to stderr.
macro_rules! info {
    ($($arg:tt)*) => {
        eprintln!("{} pgset-agent: {}", $crate::log::timestamp(), format_args!($($arg)*))
    };
}

/// Writes one warning line to stderr (`crate::warn!`; named so as not to meet the `warn`
/// attribute).
macro_rules! warn_line {
    ($($arg:tt)*) => {
        eprintln!("{} pgset-agent: WARNING: {}", $crate::log::timestamp(), format_args!($($arg)*))
    };
}

pub(crate) use {info, warn_line as warn};

/// Now as `2026-01-31 12:34:56.789 UTC`.
pub fn timestamp() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(since.as_secs() as i64, since.subsec_millis())
}

/// Formats seconds since the epoch (UTC) with milliseconds.
pub fn format_utc(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{millis:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0, 0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29 00:00:00.005 UTC");
        assert_eq!(
            format_utc(1_795_000_000, 123),
            "2026-11-18 11:06:40.123 UTC"
        );
    }
}
