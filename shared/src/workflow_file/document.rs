//! The document layer under workflow and project files: a file's errors so far ([`Ctx`]),
//! tables of the parsed TOML with their places and field paths ([`Table`]), and the typed
//! reads on them (strings, integers, durations, choices, arrays of tables), each reporting
//! the field, its line and the bound or the choices.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::duration::{duration_text, parse_duration_ms};
use crate::limits::*;
use crate::toml_place::line_of;
use crate::validate;
use crate::workflow::parse_dollars;

use super::FileError;

pub(super) type Span = Range<usize>;

/// The errors found so far in one file.
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
    pub(super) errors: Vec<FileError>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(text: &'a str, file: &'a str) -> Ctx<'a> {
        Ctx { text, file, errors: Vec::new() }
    }

    pub(super) fn at(&mut self, span: Option<&Span>, field: &str, message: impl Into<String>) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.errors.push(FileError {
            file: self.file.to_string(),
            line,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// The document, or `None` after reporting why there is none (size, TOML syntax).
    pub(super) fn document(&mut self) -> Option<Spanned<DeTable<'a>>> {
        if self.text.len() > WORKFLOW_FILE_BYTES_MAX {
            let n = self.text.len();
            self.at(None, "", format!("the file is {n} bytes, at most {WORKFLOW_FILE_BYTES_MAX} allowed"));
            return None;
        }
        let (doc, errors) = DeTable::parse_recoverable(self.text);
        if errors.is_empty() {
            return Some(doc);
        }
        for e in errors {
            let message = format!("invalid TOML: {}", e.message().trim_end());
            self.at(e.span().as_ref(), "", message);
        }
        None
    }

    pub(super) fn finish<T>(mut self, value: T) -> Result<T, Vec<FileError>> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        self.errors.sort_by_key(|e| e.line.unwrap_or(0));
        Err(self.errors)
    }
}

pub(super) fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

pub(super) fn choices(list: &[&str]) -> String {
    list.join(", ")
}

/// A table of the document with its place (span of its header or inline text) and field path.
#[derive(Clone)]
pub(super) struct Table<'a, 'i> {
    pub(super) map: &'a DeTable<'i>,
    pub(super) span: Option<Span>,
    pub(super) path: String,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(super) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.map.get(key)
    }

    pub(super) fn missing(&self, cx: &mut Ctx<'_>, key: &str) {
        cx.at(self.span.as_ref(), &self.field(key), "missing (required)");
    }

    /// Reports every key not in `known`, naming it and the accepted ones.
    pub(super) fn check_keys(&self, cx: &mut Ctx<'_>, known: &[&str]) {
        for (k, _) in self.map.iter() {
            let key: &str = k.get_ref();
            if !known.contains(&key) {
                cx.at(Some(&k.span()), &self.field(key), format!("unknown key; expected one of: {}", choices(known)));
            }
        }
    }

    pub(super) fn wrong(&self, cx: &mut Ctx<'_>, key: &str, v: &Spanned<DeValue<'_>>, expected: &str) {
        cx.at(Some(&v.span()), &self.field(key), format!("expected {expected}, found {}", kind(v.get_ref())));
    }

    pub(super) fn string(&self, cx: &mut Ctx<'_>, key: &str, required: bool) -> Option<(String, Span)> {
        let Some(v) = self.get(key) else {
            if required {
                self.missing(cx, key);
            }
            return None;
        };
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            _ => {
                self.wrong(cx, key, v, "a string");
                None
            }
        }
    }

    /// A string that must be one of `list`.
    pub(super) fn choice(&self, cx: &mut Ctx<'_>, key: &str, list: &[&'static str]) -> Option<(&'static str, Span)> {
        let (s, span) = self.string(cx, key, false)?;
        match list.iter().find(|c| **c == s) {
            Some(c) => Some((c, span)),
            None => {
                cx.at(Some(&span), &self.field(key), format!("{s:?} is not one of: {}", choices(list)));
                None
            }
        }
    }

    /// A non-negative integer in `min..=max`.
    pub(super) fn uint(&self, cx: &mut Ctx<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong(cx, key, v, "an integer");
            return None;
        };
        let field = self.field(key);
        let Ok(n) = i128::from_str_radix(i.as_str(), i.radix()) else {
            cx.at(Some(&v.span()), &field, format!("{i} is not an integer in {min}..={max}"));
            return None;
        };
        if n < i128::from(min) {
            cx.at(Some(&v.span()), &field, format!("{n} is below the minimum {min}"));
            return None;
        }
        if n > i128::from(max) {
            cx.at(Some(&v.span()), &field, format!("{n} is above the maximum {max}"));
            return None;
        }
        u64::try_from(n).ok()
    }

    pub(super) fn boolean(&self, cx: &mut Ctx<'_>, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong(cx, key, v, "true or false");
                None
            }
        }
    }

    /// An array of non-empty printable strings of at most `len_max` bytes, at most `items_max`
    /// of them.
    pub(super) fn strings(&self, cx: &mut Ctx<'_>, key: &str, items_max: usize, len_max: usize) -> Vec<(String, Span)> {
        let Some(v) = self.get(key) else { return Vec::new() };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(cx, key, v, "an array of strings");
            return Vec::new();
        };
        let field = self.field(key);
        if items.len() > items_max {
            cx.at(Some(&v.span()), &field, format!("has {} entries, at most {items_max} allowed", items.len()));
        }
        let mut out = Vec::new();
        for (j, item) in items.iter().enumerate() {
            let at = format!("{field}[{j}]");
            match item.get_ref() {
                DeValue::String(s) => match validate::check_name(&at, s, len_max) {
                    Ok(()) => out.push((s.to_string(), item.span())),
                    Err(e) => cx.at(Some(&item.span()), &at, e.message),
                },
                other => cx.at(Some(&item.span()), &at, format!("expected a string, found {}", kind(other))),
            }
        }
        out
    }

    pub(super) fn table(&self, cx: &mut Ctx<'_>, key: &str) -> Option<Table<'a, 'i>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Table(map) => Some(Table { map, span: Some(v.span()), path: self.field(key) }),
            _ => {
                self.wrong(cx, key, v, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[pass]]`, or an array of inline tables), with the array's span.
    pub(super) fn tables(&self, cx: &mut Ctx<'_>, key: &str) -> (Vec<Table<'a, 'i>>, Option<Span>) {
        let Some(v) = self.get(key) else { return (Vec::new(), None) };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(cx, key, v, &format!("an array of tables ([[{key}]] or [{{ ... }}])"));
            return (Vec::new(), Some(v.span()));
        };
        let field = self.field(key);
        let mut out = Vec::new();
        for (j, item) in items.iter().enumerate() {
            let at = format!("{field}[{j}]");
            match item.get_ref() {
                DeValue::Table(map) => out.push(Table { map, span: Some(item.span()), path: at }),
                other => cx.at(Some(&item.span()), &at, format!("expected a table, found {}", kind(other))),
            }
        }
        (out, Some(v.span()))
    }

    /// A duration (`"500ms"`, `"30s"`, `"10m"`, `"2h"`; `"0"` or `0`: zero) in `min..=max` ms.
    pub(super) fn duration(&self, cx: &mut Ctx<'_>, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(key)?;
        let field = self.field(key);
        let ms = match v.get_ref() {
            DeValue::String(s) => match parse_duration_ms(s) {
                Ok(ms) => ms,
                Err(m) => {
                    cx.at(Some(&v.span()), &field, m);
                    return None;
                }
            },
            DeValue::Integer(i) if i.as_str().trim_start_matches(['+', '-']).bytes().all(|b| b == b'0') => 0,
            _ => {
                self.wrong(cx, key, v, "a duration such as \"30s\" or \"10m\"");
                return None;
            }
        };
        if ms < min || ms > max {
            cx.at(
                Some(&v.span()),
                &field,
                format!("{} is outside {}..={}", duration_text(ms), duration_text(min), duration_text(max)),
            );
            return None;
        }
        Some(ms)
    }

    /// An amount in dollars: a string such as `"3.00"` (or a bare number, read as written).
    pub(super) fn dollars(&self, cx: &mut Ctx<'_>, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        let field = self.field(key);
        let text = match v.get_ref() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) if i.radix() == 10 => i.as_str().to_string(),
            DeValue::Float(f) => f.as_str().to_string(),
            _ => {
                self.wrong(cx, key, v, "an amount in dollars such as \"3.00\"");
                return None;
            }
        };
        match parse_dollars(&field, &text) {
            Ok(m) => Some(m),
            Err(e) => {
                cx.at(Some(&v.span()), &field, e.message);
                None
            }
        }
    }

    /// An executor payload table, as JSON bytes; absent: empty.
    pub(super) fn payload(&self, cx: &mut Ctx<'_>, key: &str) -> Vec<u8> {
        let Some(v) = self.get(key) else { return Vec::new() };
        let field = self.field(key);
        if !matches!(v.get_ref(), DeValue::Table(_)) {
            self.wrong(cx, key, v, "a table such as { executor = \"scripted\" }");
            return Vec::new();
        }
        let json = match to_json(v.get_ref()) {
            Ok(j) => j,
            Err(m) => {
                cx.at(Some(&v.span()), &field, m);
                return Vec::new();
            }
        };
        let bytes = serde_json::to_vec(&json).unwrap_or_default();
        if bytes.len() > TASK_PAYLOAD_BYTES_MAX {
            cx.at(
                Some(&v.span()),
                &field,
                format!("is {} bytes as JSON, at most {TASK_PAYLOAD_BYTES_MAX} allowed", bytes.len()),
            );
            return Vec::new();
        }
        bytes
    }
}

/// A TOML value as JSON (date-times as their text).
pub(super) fn to_json(v: &DeValue<'_>) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match v {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Value::from(n),
            Err(_) => match u64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Value::from(n),
                Err(_) => return Err(format!("integer {i} is out of range")),
            },
        },
        DeValue::Float(f) => {
            let x: f64 = f.as_str().parse().map_err(|_| format!("float {f} is not a number JSON can hold"))?;
            serde_json::Number::from_f64(x).map(Value::Number).ok_or_else(|| format!("float {f} has no JSON form"))?
        }
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(items.iter().map(|x| to_json(x.get_ref())).collect::<Result<_, _>>()?),
        DeValue::Table(map) => {
            let mut out = serde_json::Map::new();
            for (k, x) in map.iter() {
                out.insert(k.get_ref().to_string(), to_json(x.get_ref())?);
            }
            Value::Object(out)
        }
    })
}

/// A lowercase name (`[a-z0-9-]`, at most `NAME_LEN_MAX_BYTES`).
pub(super) fn check_slug(cx: &mut Ctx<'_>, field: &str, span: &Span, s: &str) -> bool {
    if let Err(e) = validate::check_name(field, s, NAME_LEN_MAX_BYTES) {
        cx.at(Some(span), field, e.message);
        return false;
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        cx.at(Some(span), field, format!("{s:?} may use only a-z, 0-9 and -"));
        return false;
    }
    true
}

/// Free text: at most `TEXT_LEN_MAX_BYTES`, and not blank when `required`.
pub(super) fn check_text(cx: &mut Ctx<'_>, field: &str, span: &Span, s: &str, required: bool) -> bool {
    if required && s.trim().is_empty() {
        cx.at(Some(span), field, "must not be empty");
        return false;
    }
    if s.len() > TEXT_LEN_MAX_BYTES {
        cx.at(Some(span), field, format!("is {} bytes, at most {TEXT_LEN_MAX_BYTES} allowed", s.len()));
        return false;
    }
    true
}
