//! UTC timestamps as RFC 3339 text (`2026-11-22T13:05:00Z`), and the proleptic Gregorian
//! calendar under them: the CLI's `--since` and record times, and the budget periods' UTC
//! boundaries.
//!
//! Pure arithmetic: no clock is read here.

/// Milliseconds in a day.
pub const DAY_MS: u64 = 24 * 60 * 60 * 1_000;

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `ms` since the Unix epoch as RFC 3339 UTC with milliseconds: `2026-11-22T13:05:00.250Z`.
pub fn rfc3339(ms: u64) -> String {
    let (y, mo, d) = civil_from_days((ms / DAY_MS) as i64);
    let in_day = ms % DAY_MS;
    let (h, mi, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1_000 % 60, in_day % 1_000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Parses RFC 3339 (`2026-11-22T13:05:00Z`, `2026-11-22T14:05:00.5+01:00`; `t`, `z` and a
/// space for `T` accepted) into ms since the Unix epoch. Times before 1970 are refused.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{text:?} is not an RFC 3339 time like 2026-11-22T13:05:00Z: {why}");
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS and a zone"));
    }
    let num = |from: usize, to: usize| -> Result<u32, String> {
        let part = &text[from..to];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad(&format!("{part:?} is not a number")));
        }
        part.parse().map_err(|_| bad(&format!("{part:?} is not a number")))
    };
    let (y, mo, d, h, mi, s) = (num(0, 4)?, num(5, 7)?, num(8, 10)?, num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=days_in_month(i64::from(y), mo)).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad("a field is out of range"));
    }
    let (frac_ms, zone) = fraction(&text[19..]).ok_or_else(|| bad("bad fraction of a second"))?;
    let offset_ms = zone_offset_ms(zone).ok_or_else(|| bad("the zone is not Z or ±HH:MM"))?;
    let days = days_from_civil(i64::from(y), mo, d);
    let local = days * DAY_MS as i64 + i64::from(h * 3_600 + mi * 60 + s.min(59)) * 1_000 + frac_ms;
    u64::try_from(local - offset_ms).map_err(|_| bad("before 1970"))
}

/// Days in month `m` (1..=12) of year `y`.
fn days_in_month(y: i64, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (days_from_civil(ny, nm, 1) - days_from_civil(y, m, 1)) as u32
}

/// `.123` at the start of `rest` as ms (digits past the third ignored), and what follows.
fn fraction(rest: &str) -> Option<(i64, &str)> {
    let Some(digits) = rest.strip_prefix('.') else { return Some((0, rest)) };
    let len = digits.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 {
        return None;
    }
    let ms = digits[..len]
        .bytes()
        .take(3)
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |a, c| a * 10 + i64::from(c - b'0'));
    Some((ms, &digits[len..]))
}

/// `Z` or `±HH:MM` as ms east of UTC.
fn zone_offset_ms(zone: &str) -> Option<i64> {
    if zone == "Z" || zone == "z" {
        return Some(0);
    }
    let b = zone.as_bytes();
    if b.len() != 6 || b[3] != b':' || !zone[1..3].bytes().chain(zone[4..].bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i64, i64) = (zone[1..3].parse().ok()?, zone[4..].parse().ok()?);
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    (h < 24 && m < 60).then_some(sign * (h * 3_600_000 + m * 60_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_and_parse_back() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        let t = days_from_civil(2026, 11, 22) as u64 * DAY_MS + 13 * 3_600_000 + 5 * 60_000 + 250;
        assert_eq!(rfc3339(t), "2026-11-22T13:05:00.250Z");
        assert_eq!(parse_rfc3339("2026-11-22T13:05:00.250Z"), Ok(t));
        assert_eq!(parse_rfc3339("2026-11-22T14:05:00.25+01:00"), Ok(t));
        assert_eq!(parse_rfc3339("2026-11-22 08:05:00.250-05:00"), Ok(t));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(days_from_civil(2024, 2, 29) as u64 * DAY_MS));
        assert_eq!(parse_rfc3339("2026-12-31T23:59:59Z").map(rfc3339), Ok("2026-12-31T23:59:59.000Z".into()));
        for bad in [
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-22T13:05:00",
            "1969-12-31T23:59:59Z",
            "2026-11-22T13:05:00+1:00",
            "10m",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_and_dates_agree() {
        for days in [-800_000i64, -1, 0, 1, 59, 365, 10_957, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
