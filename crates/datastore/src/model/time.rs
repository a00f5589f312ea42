//! The time formats Calico's Go code writes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cni_protocol::logging::civil_from_days;

fn split(t: SystemTime) -> (i64, u32, u32, u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    (y, m, day, secs % 86_400, d.subsec_nanos())
}

/// `metav1.Time`: RFC 3339 in UTC to the second, e.g. `2026-05-01T10:00:00Z`
/// (`affinity_claim_time`, `creationTimestamp`).
pub fn rfc3339_seconds(t: SystemTime) -> String {
    let (y, m, d, s, _) = split(t);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Go's `time.Now().UTC().String()`: `2026-05-01 10:00:01.1234 +0000 UTC`, trailing zeros
/// of the fraction trimmed and the fraction dropped when zero (the allocation `timestamp`).
pub fn go_utc_string(t: SystemTime) -> String {
    let (y, m, d, s, nanos) = split(t);
    let frac = if nanos == 0 {
        String::new()
    } else {
        let digits = format!("{nanos:09}");
        format!(".{}", digits.trim_end_matches('0'))
    };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
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

/// Days since the epoch of a proleptic Gregorian date (inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses RFC 3339 (`2026-05-01T10:00:00Z`, optional fraction, `Z` or `±hh:mm`).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
        rest = &frac[digits.len()..];
        let padded = format!("{digits:0<9}");
        nanos = padded.get(..9)?.parse().ok()?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    let days = days_from_civil(y, u32::try_from(mo).ok()?, u32::try_from(d).ok()?);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
