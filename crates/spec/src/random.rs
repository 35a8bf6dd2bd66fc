//! Generated secrets: the cluster's passwords and its id, from the operating system's random
//! source, uniform over their alphabet. Deploy's Secret and local mode's password files use
//! these same functions.

/// Length of a generated password.
pub const PASSWORD_LEN: usize = 32;

/// Characters of a generated password: letters and digits only, so it survives every quoting
/// context (connection strings, `.pgpass`, shells) without escaping.
pub const PASSWORD_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
}

/// Bytes at or above this are drawn again: the largest multiple of the alphabet's size that
/// fits in a byte, so every character is equally likely.
const fn acceptance_limit(alphabet_len: usize) -> usize {
    256 - 256 % alphabet_len
}

/// Maps random bytes to characters of `alphabet` by rejection sampling (no modulo bias),
/// appending to `out` until it holds `len` characters; returns whether it got there.
fn take_uniform(
    bytes: impl IntoIterator<Item = u8>,
    alphabet: &[u8],
    len: usize,
    out: &mut String,
) -> bool {
    let limit = acceptance_limit(alphabet.len());
    for b in bytes {
        if out.len() >= len {
            break;
        }
        if (b as usize) < limit {
            out.push(alphabet[b as usize % alphabet.len()] as char);
        }
    }
    out.len() >= len
}

/// A new password: [`PASSWORD_LEN`] characters uniform over [`PASSWORD_ALPHABET`] (about 190
/// bits).
pub fn password() -> Result<String, RandomError> {
    let mut out = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    loop {
        fill(&mut buf)?;
        if take_uniform(buf, PASSWORD_ALPHABET, PASSWORD_LEN, &mut out) {
            return Ok(out);
        }
    }
}

/// A new cluster id: 128 random bits as 32 hex digits.
pub fn cluster_id() -> Result<String, RandomError> {
    let mut bytes = [0u8; 16];
    fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    #[test]
    fn passwords_are_long_from_the_alphabet_and_distinct() {
        let drawn: Vec<String> = (0..8).map(|_| password().unwrap()).collect();
        for p in &drawn {
            assert_eq!(p.len(), PASSWORD_LEN);
            assert!(p.bytes().all(|c| PASSWORD_ALPHABET.contains(&c)), "{p}");
        }
        assert_eq!(drawn.iter().collect::<HashSet<_>>().len(), drawn.len());
    }

    #[test]
    fn every_byte_value_once_gives_every_character_equally_often() {
        // Each of the 256 byte values once: a biased mapping (plain modulo) would give the
        // first 256 % 62 = 8 characters five times and the rest four times.
        let mut out = String::new();
        take_uniform(0..=255u8, PASSWORD_ALPHABET, usize::MAX, &mut out);
        let mut counts: BTreeMap<char, usize> = BTreeMap::new();
        for c in out.chars() {
            *counts.entry(c).or_default() += 1;
        }
        assert_eq!(counts.len(), PASSWORD_ALPHABET.len());
        assert!(
            counts.values().all(|n| *n == 256 / PASSWORD_ALPHABET.len()),
            "{counts:?}"
        );
        assert_eq!(out.len(), acceptance_limit(PASSWORD_ALPHABET.len()));
    }

    #[test]
    fn bytes_past_the_limit_are_drawn_again() {
        // 248 = 4 * 62 is the first rejected value; 61 maps to '9', 62 wraps to 'A'.
        let mut out = String::new();
        let done = take_uniform([248, 255, 0, 250, 61, 62], PASSWORD_ALPHABET, 3, &mut out);
        assert!(done);
        assert_eq!(out, "A9A");
        let mut short = String::new();
        assert!(!take_uniform([249, 1], PASSWORD_ALPHABET, 2, &mut short));
        assert_eq!(short, "B");
    }

    #[test]
    fn cluster_ids_are_128_bit_hex_and_distinct() {
        let a = cluster_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, cluster_id().unwrap());
    }
}
