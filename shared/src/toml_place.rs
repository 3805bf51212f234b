//! Where a field sits in a TOML text: the 1-based line of a field path such as
//! `workers[1].slots.implementer`, so that an error found after parsing (a bound, a choice, a
//! cross-reference) names its line like a syntax error does.

use toml::de::{DeTable, DeValue};

/// The line of `field` in `text`: of the value itself, or of the nearest enclosing table or
/// array element the text has (a field a check adds, such as a missing key, lands on its
/// table). `None` when the text does not parse or the path's first key is absent.
pub fn line_of_field(text: &str, field: &str) -> Option<usize> {
    let doc = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = doc.get_ref();
    let mut at = None;
    for segment in field.split('.').filter(|s| !s.is_empty()) {
        let (key, indexes) = segment.split_once('[').map_or((segment, ""), |(k, rest)| (k, rest));
        let Some(mut value) = table.get(key) else { break };
        at = Some(value.span().start);
        for index in indexes.split('[').map(|i| i.trim_end_matches(']')).filter(|i| !i.is_empty()) {
            let DeValue::Array(items) = value.get_ref() else { return at.map(|s| line_of(text, s)) };
            let Some(item) = index.parse::<usize>().ok().and_then(|i| items.get(i)) else {
                return at.map(|s| line_of(text, s));
            };
            value = item;
            at = Some(value.span().start);
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    at.map(|s| line_of(text, s))
}

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name = \"x\"\n\n[[workers]]\ncount = 2\n\n[[workers]]\ncount = 3\nslots = { implementer = 2 }\n\n[durations]\npass = { plan = \"5m\" }\n";

    #[test]
    fn a_field_path_finds_its_line() {
        assert_eq!(line_of_field(TEXT, "name"), Some(1));
        assert_eq!(line_of_field(TEXT, "workers[1].count"), Some(7));
        assert_eq!(line_of_field(TEXT, "workers[1].slots.implementer"), Some(8));
        assert_eq!(line_of_field(TEXT, "durations.pass.plan"), Some(11));
    }

    #[test]
    fn a_field_the_text_lacks_lands_on_its_nearest_table() {
        assert_eq!(line_of_field(TEXT, "workers[0].labels"), line_of_field(TEXT, "workers[0]"));
        assert!(line_of_field(TEXT, "workers[0]").is_some_and(|l| (3..=4).contains(&l)));
        assert_eq!(line_of_field(TEXT, "workers[9].count"), line_of_field(TEXT, "workers"));
        assert_eq!(line_of_field(TEXT, "arrivals"), None);
        assert_eq!(line_of_field("not = = toml", "not"), None);
    }
}
