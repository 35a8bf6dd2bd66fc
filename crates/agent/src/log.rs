//! The agent's log: one line per event on stderr, prefixed so it stands out from postgres's own lines.

/// Writes one informational line to stderr.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        eprintln!("pgset-agent: {}", format_args!($($arg)*))
    };
}

/// Writes one warning line to stderr.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        eprintln!("pgset-agent: WARNING: {}", format_args!($($arg)*))
    };
}
