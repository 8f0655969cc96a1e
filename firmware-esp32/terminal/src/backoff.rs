//! When to try again after a failed or lost connection: doubling from half a second
//! to half a minute, with jitter so that many terminals that lost the same server do
//! not all come back in the same millisecond.

/// First wait, in milliseconds.
pub const BACKOFF_MIN_MS: u64 = 500;
/// Longest wait, in milliseconds.
pub const BACKOFF_MAX_MS: u64 = 30_000;

/// The reconnection policy's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A policy that has seen no failure.
    pub const fn new() -> Self {
        Self { failures: 0 }
    }

    /// The wait before the next attempt, after one more failure. `jitter` is any
    /// random number; up to a quarter of the wait is taken off with it.
    pub fn next_delay(&mut self, jitter: u32) -> u64 {
        let base = BACKOFF_MIN_MS.saturating_mul(1 << self.failures.min(16)).min(BACKOFF_MAX_MS);
        self.failures = self.failures.saturating_add(1);
        base - (u64::from(jitter) % (base / 4 + 1))
    }

    /// A connection got through: the next failure starts from the shortest wait.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset_after_success() {
        let mut backoff = Backoff::new();
        let waits: Vec<u64> = (0..9).map(|_| backoff.next_delay(0)).collect();
        assert_eq!(waits, [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(0), 500);
    }

    #[test]
    fn jitter_takes_off_at_most_a_quarter() {
        for jitter in [1u32, 77, 4_000, u32::MAX] {
            let mut backoff = Backoff::new();
            for _ in 0..10 {
                let before = backoff.clone();
                let wait = backoff.next_delay(jitter);
                let mut plain = before;
                let base = plain.next_delay(0);
                assert!(wait <= base && wait >= base - base / 4, "{wait} vs {base}");
            }
        }
    }
}
