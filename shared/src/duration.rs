//! The one duration grammar, for workflow and project files, simulator scenarios and the
//! command line: whole numbers, each with a unit (`ms`, `s`, `m`, `h`, `d`), summed —
//! `500ms`, `30s`, `10m`, `2h`, `7d`, `1h30m`; `0` alone is zero. No fractions: a duration
//! is an exact number of milliseconds.

/// Parses a duration into milliseconds; the error says what was wrong and shows the form.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!("{s:?} is not a duration ({why}; whole numbers with units ms, s, m, h or d, e.g. \"30s\" or \"1h30m\")")
    };
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let mut rest = t;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad("a unit needs a number before it"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        let letters = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_ms = match &rest[..letters] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(bad("a number needs a unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[letters..];
        total = n.checked_mul(unit_ms).and_then(|ms| total.checked_add(ms)).ok_or_else(|| bad("too long"))?;
    }
    Ok(total)
}

/// Milliseconds as the shortest exact duration text in hours at most (`"24h"`, `"10m"`,
/// `"1500ms"`), which [`parse_duration_ms`] reads back.
pub fn duration_text(ms: u64) -> String {
    match ms {
        0 => "0".to_string(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grammar_with_units_summed() {
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_duration_ms(" 20m "), Ok(1_200_000));
        for bad in ["", "10", "1.5h", "3y", "m", "h1", "99999999999999999999s", "5s 3s"] {
            let e = parse_duration_ms(bad).unwrap_err();
            assert!(e.contains("is not a duration") && e.contains("e.g. \"30s\""), "{bad:?}: {e}");
        }
        for ms in [0, 1, 999, 1_000, 90_000, 5_400_000, 86_400_000, 90_061_001] {
            assert_eq!(parse_duration_ms(&duration_text(ms)), Ok(ms), "{ms}");
        }
    }
}
