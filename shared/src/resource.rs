//! Resource paths and lock modes: the vocabulary of the lock table.
//!
//! A resource path is hierarchical, coarse to fine, one typed segment per level:
//!
//! ```text
//! pg:staging/schema:public/table:orders/rows:[1000,2000)
//! └─kind:name┘                          └─ row range, half-open, last segment only
//! ```
//!
//! Paths are kept in their canonical text form; ancestors are prefixes of that text cut at
//! `/`, so walking up the hierarchy never allocates. A row-range segment (`rows:[lo,hi)`) may
//! only be the last segment and never the first; two row ranges under the same parent
//! conflict when they overlap.
//!
//! Modes: a user asks for `shared` or `exclusive`. The lock table derives the intention modes
//! on ancestors (multi-granularity locking, Gray et al.), see [`LockMode`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::limits::{PATH_LEN_MAX_BYTES, PATH_SEGMENTS_MAX, SEGMENT_KIND_LEN_MAX_BYTES, SEGMENT_NAME_LEN_MAX_BYTES};
use crate::validate::Invalid;

/// A half-open row range `[lo, hi)`, `lo < hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RowRange {
    pub lo: u64,
    pub hi: u64,
}

impl RowRange {
    pub fn overlaps(&self, other: &RowRange) -> bool {
        self.lo < other.hi && other.lo < self.hi
    }
}

/// A parsed, validated resource path in canonical form. Equality, order and hash are those
/// of the canonical text (everything else is derived from it), so a map keyed by paths can
/// be searched with a `&str`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourcePath {
    /// Canonical text, shared: cloning a path (into grants, effects, responses) is a
    /// reference-count increment.
    text: Arc<str>,
    /// Byte offset of the end of each segment in `text`; `ends[depth - 1] == text.len()`.
    ends: [u16; PATH_SEGMENTS_MAX],
    depth: u8,
    rows: Option<RowRange>,
}

impl ResourcePath {
    /// Parses and validates a path. Errors name the field `resource` and the bound broken.
    pub fn parse(text: &str) -> Result<ResourcePath, Invalid> {
        let field = "resource";
        if text.is_empty() {
            return Err(Invalid::new(field, "must not be empty"));
        }
        if text.len() > PATH_LEN_MAX_BYTES {
            return Err(Invalid::new(field, format!("is {} bytes, at most {PATH_LEN_MAX_BYTES} allowed", text.len())));
        }
        let raw: Vec<&str> = text.split('/').collect();
        if raw.len() > PATH_SEGMENTS_MAX {
            return Err(Invalid::new(
                field,
                format!("has {} segments, at most {PATH_SEGMENTS_MAX} allowed", raw.len()),
            ));
        }
        let mut canonical = String::with_capacity(text.len());
        let mut ends = [0u16; PATH_SEGMENTS_MAX];
        let mut rows = None;
        for (i, segment) in raw.iter().enumerate() {
            let Some((kind, name)) = segment.split_once(':') else {
                return Err(Invalid::new(
                    field,
                    format!("segment {:?} must be kind:name (e.g. table:orders)", segment),
                ));
            };
            check_kind(kind)?;
            if i > 0 {
                canonical.push('/');
            }
            canonical.push_str(kind);
            canonical.push(':');
            if kind == "rows" {
                if i == 0 {
                    return Err(Invalid::new(field, "a rows:[lo,hi) segment needs a parent"));
                }
                if i + 1 != raw.len() {
                    return Err(Invalid::new(field, "a rows:[lo,hi) segment must be the last"));
                }
                let range = parse_rows(name)?;
                canonical.push_str(&format!("[{},{})", range.lo, range.hi));
                rows = Some(range);
            } else {
                check_name(name)?;
                canonical.push_str(name);
            }
            ends[i] = canonical.len() as u16;
        }
        Ok(ResourcePath { text: canonical.into(), ends, depth: raw.len() as u8, rows })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The canonical text, shared (no copy).
    pub fn shared_text(&self) -> Arc<str> {
        Arc::clone(&self.text)
    }

    /// Number of segments.
    pub fn depth(&self) -> usize {
        usize::from(self.depth)
    }

    /// The prefix made of the first `n` segments (`1..=depth`).
    pub fn prefix(&self, n: usize) -> &str {
        &self.text[..self.ends[n - 1] as usize]
    }

    /// Proper ancestors, root first.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> + '_ {
        (1..self.depth()).map(move |n| self.prefix(n))
    }

    /// The parent path text, if any.
    pub fn parent(&self) -> Option<&str> {
        (self.depth() > 1).then(|| self.prefix(self.depth() - 1))
    }

    /// The path made of the first `n` segments (`1..=depth`), without re-parsing.
    pub fn ancestor(&self, n: usize) -> ResourcePath {
        assert!((1..=self.depth()).contains(&n), "ancestor depth {n} of {}", self.depth());
        if n == self.depth() {
            return self.clone();
        }
        let mut ends = [0u16; PATH_SEGMENTS_MAX];
        ends[..n].copy_from_slice(&self.ends[..n]);
        ResourcePath { text: self.prefix(n).into(), ends, depth: n as u8, rows: None }
    }

    /// The row range, when the last segment is `rows:[lo,hi)`.
    pub fn rows(&self) -> Option<RowRange> {
        self.rows
    }

    /// True when `self` equals `other` or lies under it.
    pub fn is_within(&self, other: &str) -> bool {
        &*self.text == other || (self.text.starts_with(other) && self.text.as_bytes().get(other.len()) == Some(&b'/'))
    }
}

fn check_kind(kind: &str) -> Result<(), Invalid> {
    let field = "resource";
    if kind.is_empty() || kind.len() > SEGMENT_KIND_LEN_MAX_BYTES {
        return Err(Invalid::new(
            field,
            format!("segment kind {kind:?} must be 1..={SEGMENT_KIND_LEN_MAX_BYTES} bytes"),
        ));
    }
    let mut chars = kind.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
        return Err(Invalid::new(field, format!("segment kind {kind:?} must match [a-z][a-z0-9_-]*")));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Invalid> {
    let field = "resource";
    if name.is_empty() || name.len() > SEGMENT_NAME_LEN_MAX_BYTES {
        return Err(Invalid::new(
            field,
            format!("segment name {name:?} must be 1..={SEGMENT_NAME_LEN_MAX_BYTES} bytes"),
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@+=".contains(c)) {
        return Err(Invalid::new(field, format!("segment name {name:?} may hold only A-Z a-z 0-9 . _ - @ + =")));
    }
    Ok(())
}

fn parse_rows(spec: &str) -> Result<RowRange, Invalid> {
    let field = "resource";
    let bad = || Invalid::new(field, format!("row range {spec:?} must be [lo,hi) with lo < hi"));
    let inner = spec.strip_prefix('[').and_then(|s| s.strip_suffix(')')).ok_or_else(bad)?;
    let (lo, hi) = inner.split_once(',').ok_or_else(bad)?;
    let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u64 = hi.trim().parse().map_err(|_| bad())?;
    if lo >= hi {
        return Err(bad());
    }
    Ok(RowRange { lo, hi })
}

impl PartialEq for ResourcePath {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for ResourcePath {}

impl PartialOrd for ResourcePath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ResourcePath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl std::hash::Hash for ResourcePath {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state)
    }
}

impl std::borrow::Borrow<str> for ResourcePath {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl TryFrom<String> for ResourcePath {
    type Error = Invalid;
    fn try_from(text: String) -> Result<Self, Invalid> {
        ResourcePath::parse(&text)
    }
}

impl From<ResourcePath> for String {
    fn from(path: ResourcePath) -> String {
        path.text.to_string()
    }
}

impl std::str::FromStr for ResourcePath {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        ResourcePath::parse(s)
    }
}

/// What a user asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Read: compatible with other shared holders.
    Shared,
    /// Write: compatible with nothing.
    Exclusive,
}

impl Mode {
    pub fn lock_mode(self) -> LockMode {
        match self {
            Mode::Shared => LockMode::S,
            Mode::Exclusive => LockMode::X,
        }
    }

    /// The intention mode this mode places on every proper ancestor.
    pub fn intention(self) -> LockMode {
        match self {
            Mode::Shared => LockMode::IS,
            Mode::Exclusive => LockMode::IX,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Exclusive => "exclusive",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        match s {
            "shared" | "s" | "S" | "read" => Ok(Mode::Shared),
            "exclusive" | "x" | "X" | "write" => Ok(Mode::Exclusive),
            _ => Err(Invalid::new("mode", format!("{s:?} is not one of shared, exclusive"))),
        }
    }
}

/// The five lock modes of multi-granularity locking.
///
/// ```text
///          IS   IX   S    SIX  X
///   IS     ok   ok   ok   ok   --
///   IX     ok   ok   --   --   --
///   S      ok   --   ok   --   --
///   SIX    ok   --   --   --   --
///   X      --   --   --   --   --
/// ```
///
/// SIX never appears on a single request; it is what an owner holding `S` on a node and an
/// intention-exclusive below it holds there, the join of `S` and `IX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockMode {
    IS,
    IX,
    S,
    SIX,
    X,
}

impl LockMode {
    pub const ALL: [LockMode; 5] = [LockMode::IS, LockMode::IX, LockMode::S, LockMode::SIX, LockMode::X];

    pub fn compatible(self, other: LockMode) -> bool {
        use LockMode::*;
        matches!(
            (self, other),
            (IS, IS) | (IS, IX) | (IS, S) | (IS, SIX) | (IX, IS) | (IX, IX) | (S, IS) | (S, S) | (SIX, IS)
        )
    }

    /// The least mode at least as strong as both (the lattice join).
    pub fn join(self, other: LockMode) -> LockMode {
        use LockMode::*;
        match (self, other) {
            (a, b) if a == b => a,
            (X, _) | (_, X) => X,
            (SIX, _) | (_, SIX) => SIX,
            (S, IX) | (IX, S) => SIX,
            (S, IS) | (IS, S) => S,
            (IX, IS) | (IS, IX) => IX,
            _ => unreachable!("join covers every pair"),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::IS => "IS",
            LockMode::IX => "IX",
            LockMode::S => "S",
            LockMode::SIX => "SIX",
            LockMode::X => "X",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_canonical_paths_and_their_ancestors() {
        let p = ResourcePath::parse("pg:staging/schema:public/table:orders/rows:[1000, 2000)").unwrap();
        assert_eq!(p.as_str(), "pg:staging/schema:public/table:orders/rows:[1000,2000)");
        assert_eq!(
            p.ancestors().collect::<Vec<_>>(),
            ["pg:staging", "pg:staging/schema:public", "pg:staging/schema:public/table:orders"]
        );
        assert_eq!(p.rows(), Some(RowRange { lo: 1000, hi: 2000 }));
        assert!(p.is_within("pg:staging/schema:public"));
        let a = p.ancestor(2);
        assert_eq!((a.as_str(), a.depth(), a.rows()), ("pg:staging/schema:public", 2, None));
        assert_eq!(a, ResourcePath::parse("pg:staging/schema:public").unwrap());
        assert!(!p.is_within("pg:stag"));
    }

    #[test]
    fn rejects_bad_paths_naming_the_field_and_bound() {
        for (bad, needle) in [
            ("", "must not be empty"),
            ("table", "kind:name"),
            ("rows:[1,2)", "needs a parent"),
            ("t:a/rows:[1,2)/c:d", "must be the last"),
            ("t:a/rows:[2,2)", "lo < hi"),
            ("T:a", "[a-z]"),
            ("t:a b", "may hold only"),
        ] {
            let err = ResourcePath::parse(bad).unwrap_err();
            assert_eq!(err.field, "resource");
            assert!(err.message.contains(needle), "{bad:?}: {err}");
        }
        let long = ["k:v"; PATH_SEGMENTS_MAX + 1].join("/");
        assert!(ResourcePath::parse(&long).unwrap_err().message.contains("at most 8"));
    }

    #[test]
    fn compatibility_is_symmetric_and_join_is_monotone() {
        for a in LockMode::ALL {
            for b in LockMode::ALL {
                assert_eq!(a.compatible(b), b.compatible(a), "{a} {b}");
                // Conflicting with the join means conflicting with one of its parts.
                for c in LockMode::ALL {
                    assert_eq!(c.compatible(a.join(b)), c.compatible(a) && c.compatible(b));
                }
            }
        }
    }
}
