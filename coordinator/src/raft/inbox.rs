//! A snapshot arriving from the leader in chunks, each checked before a byte of it is kept.
//!
//! openraft's own chunk receiver seeks to whatever offset a chunk names and writes there: one
//! chunk claiming an offset of 2^40 would grow the buffer to a TiB. The peer service receives
//! chunks here instead, and a chunk is kept only if
//!
//! ```text
//!   offset            <= SNAPSHOT_BYTES_MAX   else Bound("offset")  → INVALID_ARGUMENT
//!   offset + its size <= SNAPSHOT_BYTES_MAX   else Bound("data")    → INVALID_ARGUMENT
//!   offset == 0 (a snapshot starts, or starts over)
//!     or it continues the snapshot being received exactly where its bytes end
//!                                             else Mismatch         → openraft's SnapshotMismatch
//! ```
//!
//! so the buffer only ever holds bytes that were sent, in order, and never more than the
//! bound. A mismatch is answered with openraft's own `SnapshotMismatch`, on which the leader
//! starts the snapshot over from offset 0 (a chunk resent after a lost answer lands here).
//! openraft's request names no total size; the end a chunk implies is the total it claims.
//!
//! Pure: no I/O and no openraft calls. [`crate::api::peer`] owns the inbox, checks what it
//! completes ([`crate::state::State::restore`]) and hands it to openraft.

use qm_shared::limits::SNAPSHOT_BYTES_MAX;

/// Why a chunk was not kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A field past its bound: the request is malformed.
    #[error("{field}: {message}")]
    Bound { field: &'static str, message: String },
    /// The chunk does not continue the snapshot being received: it should have started at
    /// `expect` (0: no snapshot with its id is being received).
    #[error("offset: the chunk starts at byte {got}, but {expect} bytes of snapshot {id:?} have been received")]
    Mismatch { id: String, expect: u64, got: u64 },
}

/// Checks a chunk's offset and size against [`SNAPSHOT_BYTES_MAX`], whatever has been
/// received: what no snapshot could be is refused before anything else is looked at.
pub fn check_bounds(offset: u64, len: usize) -> Result<(), ChunkError> {
    if offset > SNAPSHOT_BYTES_MAX {
        return Err(ChunkError::Bound {
            field: "offset",
            message: format!("{offset} is past SNAPSHOT_BYTES_MAX ({SNAPSHOT_BYTES_MAX} bytes)"),
        });
    }
    let end = offset.saturating_add(len as u64);
    if end > SNAPSHOT_BYTES_MAX {
        return Err(ChunkError::Bound {
            field: "data",
            message: format!(
                "{len} bytes at offset {offset} make a snapshot of {end} bytes, past SNAPSHOT_BYTES_MAX ({SNAPSHOT_BYTES_MAX} bytes)"
            ),
        });
    }
    Ok(())
}

/// The snapshot being received, if any.
#[derive(Debug, Default)]
pub struct SnapshotInbox {
    receiving: Option<Receiving>,
}

#[derive(Debug)]
struct Receiving {
    id: String,
    bytes: Vec<u8>,
}

impl SnapshotInbox {
    /// Keeps one chunk of snapshot `id`; returns the whole snapshot when `done`. A refused
    /// chunk leaves the inbox as it was.
    pub fn accept(&mut self, id: &str, offset: u64, data: &[u8], done: bool) -> Result<Option<Vec<u8>>, ChunkError> {
        check_bounds(offset, data.len())?;
        if offset == 0 {
            self.receiving = Some(Receiving { id: id.to_string(), bytes: Vec::new() });
        }
        let expect = match &self.receiving {
            Some(r) if r.id == id => r.bytes.len() as u64,
            _ => 0,
        };
        let receiving = match self.receiving.as_mut() {
            Some(r) if r.id == id && expect == offset => r,
            _ => return Err(ChunkError::Mismatch { id: id.to_string(), expect, got: offset }),
        };
        receiving.bytes.extend_from_slice(data);
        if !done {
            return Ok(None);
        }
        Ok(self.receiving.take().map(|r| r.bytes))
    }

    /// Bytes held for the snapshot being received.
    pub fn received_bytes(&self) -> u64 {
        self.receiving.as_ref().map_or(0, |r| r.bytes.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_in_order_make_the_snapshot() {
        let mut inbox = SnapshotInbox::default();
        assert_eq!(inbox.accept("s1", 0, b"abc", false), Ok(None));
        assert_eq!(inbox.accept("s1", 3, b"de", false), Ok(None));
        assert_eq!(inbox.accept("s1", 5, b"f", true), Ok(Some(b"abcdef".to_vec())));
        assert_eq!(inbox.received_bytes(), 0);
    }

    #[test]
    fn an_offset_past_the_bound_is_refused_naming_the_field_and_the_bound() {
        let mut inbox = SnapshotInbox::default();
        for offset in [SNAPSHOT_BYTES_MAX + 1, u64::MAX] {
            let err = inbox.accept("s1", offset, b"x", false).unwrap_err();
            assert!(matches!(err, ChunkError::Bound { field: "offset", .. }), "{err:?}");
            assert!(err.to_string().contains("SNAPSHOT_BYTES_MAX"), "{err}");
        }
        assert_eq!(inbox.received_bytes(), 0);
    }

    #[test]
    fn a_chunk_ending_past_the_bound_is_refused() {
        let mut inbox = SnapshotInbox::default();
        let err = inbox.accept("s1", SNAPSHOT_BYTES_MAX - 1, b"xy", false).unwrap_err();
        assert!(matches!(err, ChunkError::Bound { field: "data", .. }), "{err:?}");
        assert!(err.to_string().contains("SNAPSHOT_BYTES_MAX"), "{err}");
    }

    #[test]
    fn a_gap_or_an_overlap_is_a_mismatch_and_keeps_what_was_received() {
        let mut inbox = SnapshotInbox::default();
        inbox.accept("s1", 0, b"abcd", false).unwrap();
        let gap = inbox.accept("s1", 10, b"x", false).unwrap_err();
        assert_eq!(gap, ChunkError::Mismatch { id: "s1".into(), expect: 4, got: 10 });
        let overlap = inbox.accept("s1", 2, b"x", false).unwrap_err();
        assert_eq!(overlap, ChunkError::Mismatch { id: "s1".into(), expect: 4, got: 2 });
        assert_eq!(inbox.received_bytes(), 4);
        assert_eq!(inbox.accept("s1", 4, b"e", true), Ok(Some(b"abcde".to_vec())));
    }

    #[test]
    fn another_snapshot_must_start_at_zero_and_then_replaces_the_first() {
        let mut inbox = SnapshotInbox::default();
        inbox.accept("s1", 0, b"abcd", false).unwrap();
        let err = inbox.accept("s2", 4, b"x", false).unwrap_err();
        assert_eq!(err, ChunkError::Mismatch { id: "s2".into(), expect: 0, got: 4 });
        assert_eq!(inbox.accept("s2", 0, b"xy", true), Ok(Some(b"xy".to_vec())));
        // Nothing is being received now: only offset 0 starts a snapshot.
        let err = inbox.accept("s1", 4, b"e", true).unwrap_err();
        assert_eq!(err, ChunkError::Mismatch { id: "s1".into(), expect: 0, got: 4 });
    }

    #[test]
    fn offset_zero_starts_the_same_snapshot_over() {
        let mut inbox = SnapshotInbox::default();
        inbox.accept("s1", 0, b"abcd", false).unwrap();
        assert_eq!(inbox.accept("s1", 0, b"ab", true), Ok(Some(b"ab".to_vec())));
    }
}
