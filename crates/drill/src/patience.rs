//! How long a drill waits before it gives up, scaled to the environment: every deadline is at
//! least its floor (what a fast machine needs), at least [`ROUND_TRIPS`] times the measured round
//! trip (the first connection to the master, timed), and then multiplied by the user's
//! `--patience` factor. Only the waits before giving up scale; measured figures stay as measured.

use std::time::Duration;

/// A deadline is at least this many measured round trips.
pub const ROUND_TRIPS: u32 = 5;

/// How long the first connection (the one that measures the round trip) may take, before
/// scaling by the factor: a slow environment is learnt from it, so it is generous.
pub const FIRST_CONNECT: Duration = Duration::from_secs(60);

/// The drill's patience: the user's factor and the measured round trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Patience {
    factor: f64,
    round_trip: Duration,
}

impl Default for Patience {
    fn default() -> Patience {
        Patience {
            factor: 1.0,
            round_trip: Duration::ZERO,
        }
    }
}

impl Patience {
    /// The user's factor (`--patience`): a finite number above 0.
    pub fn new(factor: f64) -> Result<Patience, String> {
        if !factor.is_finite() || factor <= 0.0 {
            return Err(format!(
                "--patience {factor}: give a factor above 0 (1 is the default, 5 for a machine five times slower)"
            ));
        }
        Ok(Patience {
            factor,
            round_trip: Duration::ZERO,
        })
    }

    /// The user's factor.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// The measured round trip (zero until measured).
    pub fn round_trip(&self) -> Duration {
        self.round_trip
    }

    /// With `round_trip` measured (the longest one seen counts).
    pub fn measured(self, round_trip: Duration) -> Patience {
        Patience {
            round_trip: self.round_trip.max(round_trip),
            ..self
        }
    }

    /// The deadline for a wait whose fast-machine value is `floor`: the larger of `floor` and
    /// [`ROUND_TRIPS`] round trips, times the factor.
    pub fn deadline(&self, floor: Duration) -> Duration {
        floor
            .max(self.round_trip.saturating_mul(ROUND_TRIPS))
            .mul_f64(self.factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_keep_their_floor_grow_with_the_round_trip_and_the_factor() {
        let s = Duration::from_secs;
        let p = Patience::default();
        assert_eq!(p.deadline(s(2)), s(2), "a fast machine waits as before");
        let slow = p.measured(Duration::from_millis(2500));
        assert_eq!(slow.deadline(s(2)), Duration::from_millis(12_500));
        assert_eq!(slow.deadline(s(300)), s(300), "a long wait keeps its floor");
        // A faster round trip later does not shorten the waits.
        assert_eq!(
            slow.measured(Duration::from_millis(10)).deadline(s(2)),
            Duration::from_millis(12_500)
        );
        let patient = Patience::new(2.5)
            .unwrap()
            .measured(Duration::from_millis(100));
        assert_eq!(patient.deadline(s(2)), s(5));
        assert_eq!(patient.deadline(s(10)), s(25));
        assert_eq!(Patience::new(0.5).unwrap().deadline(s(10)), s(5));
    }

    #[test]
    fn a_factor_must_be_above_zero() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = Patience::new(bad).unwrap_err();
            assert!(e.contains("give a factor above 0"), "{e}");
        }
        assert_eq!(Patience::new(1.0).unwrap(), Patience::default());
    }
}
