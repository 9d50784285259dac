//! Wall-clock time as the API and the store speak it. One place reads the
//! system clock, so tests and readers find every conversion here (protocol
//! cores take `Instant`s from their callers instead).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock reads before 1970).
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Microseconds since the Unix epoch: the store's timestamps.
pub fn unix_micros() -> i64 {
    i64::try_from(since_epoch().as_micros()).unwrap_or(i64::MAX)
}

fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_and_micros_agree() {
        let s = super::unix_secs();
        let us = super::unix_micros();
        assert!(s > 1_700_000_000, "the clock reads {s}");
        assert!((us / 1_000_000 - s as i64).abs() <= 1);
    }
}
