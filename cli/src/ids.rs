//! Ids as the user meets them: every id is accepted in the form `qm` and the coordinator print
//! it (`s5`, `r12`, `q3`, `t26`, `j7`) and as a bare number (`26`). Used as clap value parsers,
//! so a malformed id is a usage error (exit 2) that shows both forms.

/// A session id: `s5` or `5`.
pub fn session(text: &str) -> Result<u64, String> {
    parse(text, "s", "session")
}

/// A reservation id: `r12` or `12`.
pub fn reservation(text: &str) -> Result<u64, String> {
    parse(text, "r", "reservation")
}

/// A queued request's id: `q3` or `3`.
pub fn request(text: &str) -> Result<u64, String> {
    parse(text, "q", "request")
}

/// A task id: `t26`, `26`, or the owner name its leases carry, `task-26`.
pub fn task(text: &str) -> Result<u64, String> {
    parse(text.strip_prefix("task-").unwrap_or(text), "t", "task")
}

/// A work-item id: `j7` or `7`.
pub fn job(text: &str) -> Result<u64, String> {
    parse(text, "j", "work-item")
}

fn parse(text: &str, prefix: &str, what: &str) -> Result<u64, String> {
    let digits = text.strip_prefix(prefix).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(id) = digits.parse() {
            return Ok(id);
        }
    }
    Err(format!("{text:?} is not a {what} id: give it as printed ({prefix}7) or as a number (7)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_id_is_taken_as_printed_and_as_a_number() {
        assert_eq!(task("t26"), Ok(26));
        assert_eq!(task("26"), Ok(26));
        assert_eq!(task("task-26"), Ok(26));
        assert_eq!(job("j7"), Ok(7));
        assert_eq!(session("s5"), Ok(5));
        assert_eq!(reservation("r12"), Ok(12));
        assert_eq!(request("q3"), Ok(3));
    }

    #[test]
    fn a_malformed_id_names_the_kind_and_both_forms() {
        for bad in ["", "t", "x26", "t-1", "j7", "26x", "+26", "99999999999999999999"] {
            let err = task(bad).expect_err(bad);
            assert!(err.contains("not a task id") && err.contains("t7") && err.contains("(7)"), "{bad}: {err}");
        }
        assert!(session("t5").is_err(), "another kind's prefix is not this kind's id");
    }
}
