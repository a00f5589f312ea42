//! The time formats Calico's Go code writes, through `jiff`.
//!
//! Each is pinned byte for byte by the tests below: Go's `time.Time.String()` in UTC (fraction
//! trimmed, dropped when zero), `metav1.Time` (RFC 3339 to the second) and the parsing of
//! both, as Calico's `time.Parse(time.RFC3339, ...)` reads them (seconds and an offset
//! required).

use jiff::Timestamp;
use jiff::fmt::strtime;
use std::time::{SystemTime, UNIX_EPOCH};

/// `t` as a jiff timestamp; times before the epoch (never written here) count as the epoch,
/// as they always have.
fn timestamp(t: SystemTime) -> Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp::try_from(UNIX_EPOCH + since).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn format(pattern: &str, t: SystemTime) -> String {
    // The patterns are fixed and valid for any timestamp: formatting cannot fail.
    strtime::format(pattern, timestamp(t)).unwrap_or_default()
}

/// `metav1.Time`: RFC 3339 in UTC to the second, e.g. `2026-05-01T10:00:00Z`
/// (`affinity_claim_time`, `creationTimestamp`).
pub fn rfc3339_seconds(t: SystemTime) -> String {
    format("%Y-%m-%dT%H:%M:%SZ", t)
}

/// Go's `time.Now().UTC().String()`: `2026-05-01 10:00:01.1234 +0000 UTC`, trailing zeros
/// of the fraction trimmed and the fraction dropped when zero (the allocation `timestamp`).
pub fn go_utc_string(t: SystemTime) -> String {
    format("%Y-%m-%d %H:%M:%S%.f +0000 UTC", t)
}

/// Parses [`go_utc_string`]'s form (`2026-05-01 10:00:01.1234 +0000 UTC`), as found in
/// allocation attributes written by Calico or by us.
pub fn parse_go_utc_string(s: &str) -> Option<SystemTime> {
    parse_rfc3339(&format!("{}Z", s.strip_suffix(" +0000 UTC")?))
}

/// Nanoseconds since the epoch (a block's initial `sequenceNumber`).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
        .unwrap_or_default()
}

/// Parses RFC 3339 (`2026-05-01T10:00:00Z`, optional fraction, `Z` or `±hh:mm`; `T`, `t` or
/// a space between date and time). jiff reads a superset (ISO 8601's shorter times, time
/// zone annotations): only the full `hh:mm:ss` time with an offset gets to it, as Go's
/// RFC 3339 layout demands.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':'
        && !s.ends_with(']');
    if !shape {
        return None;
    }
    let t: Timestamp = s.parse().ok()?;
    Some(SystemTime::from(t)).filter(|t| *t >= UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_formats() {
        let t = UNIX_EPOCH + Duration::new(1_777_629_601, 123_400_000);
        assert_eq!(rfc3339_seconds(t), "2026-05-01T10:00:01Z");
        assert_eq!(go_utc_string(t), "2026-05-01 10:00:01.1234 +0000 UTC");
        assert_eq!(parse_go_utc_string(&go_utc_string(t)), Some(t));
        let whole = UNIX_EPOCH + Duration::new(1_777_629_601, 0);
        assert_eq!(parse_go_utc_string(&go_utc_string(whole)), Some(whole));
        assert_eq!(parse_go_utc_string("2026-05-01 10:00:01 +0200 CEST"), None);
        assert_eq!(go_utc_string(whole), "2026-05-01 10:00:01 +0000 UTC");
        let nanos = UNIX_EPOCH + Duration::new(1_777_629_601, 1);
        assert_eq!(
            go_utc_string(nanos),
            "2026-05-01 10:00:01.000000001 +0000 UTC"
        );
        assert_eq!(unix_nanos(t), 1_777_629_601_123_400_000);
    }

    #[test]
    fn rfc3339_round_trip_and_offsets() {
        let t = UNIX_EPOCH + Duration::new(1_777_629_601, 0);
        assert_eq!(parse_rfc3339(&rfc3339_seconds(t)), Some(t));
        assert_eq!(parse_rfc3339("2026-05-01T12:00:01+02:00"), Some(t));
        assert_eq!(
            parse_rfc3339("2026-05-01T10:00:01.5Z"),
            Some(t + Duration::from_millis(500))
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-05-01T10:00:01"), None);
    }

    /// What Go's RFC 3339 layout refuses stays refused though jiff would read it.
    #[test]
    fn only_full_rfc3339_times_parse() {
        let t = UNIX_EPOCH + Duration::new(1_777_629_601, 0);
        assert_eq!(parse_rfc3339("2026-05-01t10:00:01z"), Some(t));
        assert_eq!(parse_rfc3339("2026-05-01 10:00:01Z"), Some(t));
        assert_eq!(parse_rfc3339("2026-05-01T10:00Z"), None);
        assert_eq!(parse_rfc3339("2026-05-01T10:00:01Z[UTC]"), None);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
    }
}
