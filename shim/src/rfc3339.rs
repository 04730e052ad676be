//! RFC 3339 timestamps with nanoseconds, formatted as Go's `time.RFC3339Nano` does in UTC
//! (trailing zeros of the fraction dropped, no fraction for a whole second), which is what
//! kubelet parses in CRI log lines. Written here to keep a date crate out of every shim.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2024-05-01T12:03:04.5Z` for `t` (UTC).
pub fn format(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            // Before 1970: count back whole seconds so the fraction stays positive.
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = 0;
            if d.subsec_nanos() > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - d.subsec_nanos();
            }
            (secs, nanos)
        }
    };
    format_parts(secs, nanos)
}

fn format_parts(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses what [`format`] writes, and any RFC 3339 time with a `Z` or `±hh:mm` offset.
pub fn parse(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start || end - start > 9 {
            return None;
        }
        let digits = &s[start..end];
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
        i = end;
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let v = oh * 3600 + om * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    if secs >= 0 {
        Some(UNIX_EPOCH + Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Howard Hinnant's `days_from_civil`, the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn formats_like_go_rfc3339nano_in_utc() {
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2024-02-29T23:59:58 is 1709251198 (a leap day).
        assert_eq!(format(at(1_709_251_198, 0)), "2024-02-29T23:59:58Z");
        assert_eq!(
            format(at(1_709_251_198, 500_000_000)),
            "2024-02-29T23:59:58.5Z"
        );
        assert_eq!(
            format(at(1_709_251_198, 123_456_789)),
            "2024-02-29T23:59:58.123456789Z"
        );
        assert_eq!(
            format(at(1_709_251_198, 1_000)),
            "2024-02-29T23:59:58.000001Z"
        );
        assert_eq!(format(at(4_102_444_800, 0)), "2100-01-01T00:00:00Z");
        assert_eq!(
            format(UNIX_EPOCH - Duration::from_millis(1500)),
            "1969-12-31T23:59:58.5Z"
        );
    }

    #[test]
    fn parse_inverts_format() {
        for t in [
            UNIX_EPOCH,
            at(1_709_251_198, 0),
            at(1_709_251_198, 123_456_789),
            at(1_709_251_198, 10),
            at(951_782_400, 999_999_999), // 2000-02-29
            at(4_102_444_800, 1),
        ] {
            assert_eq!(parse(&format(t)), Some(t), "{}", format(t));
        }
    }

    #[test]
    fn parse_takes_offsets_and_refuses_garbage() {
        assert_eq!(
            parse("2024-02-29T23:59:58.5+01:00"),
            Some(at(1_709_251_198 - 3600, 500_000_000))
        );
        assert_eq!(
            parse("2024-02-29T22:59:58-01:00"),
            Some(at(1_709_251_198, 0))
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-02-29T23:59:58",
            "2024-13-01T00:00:00Z",
            "2024-02-29T23:59:58.Z",
            "2024-02-29T23:59:58.1234567890Z",
            "2024-02-29T23:59:58+0100",
            "2024-02-29 23:59:58Z",
            "2024-0a-29T23:59:58Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
