//! The audit log of one node: what arrived at its gRPC port and how it was answered.
//!
//! ```text
//!   api/audit.rs (the layer) ── record(now, Call) ──▶ AuditLog        (never blocks, never fails)
//!        ring (memory): the records of the kept segments ◀── list(Query)   (ListAudit)
//!        └─ try_send (bounded queue) ──▶ writer thread ──▶ <data dir>/audit/audit-<segment>.jsonl
//!                                          writes what is queued, fsyncs, repeats
//! ```
//!
//! Per node and not replicated, as Vault, Nomad and Consul keep theirs: a denial of an
//! unauthenticated caller must not become a Raft write. Records are JSON lines in segments of
//! `bytes_max / AUDIT_SEGMENTS`; past `AUDIT_SEGMENTS` segments the oldest is deleted, in
//! memory and on disk alike, so a node keeps at most `bytes_max` of records and the oldest
//! sequence number moves forward. On start the kept segments are read back (a last line cut
//! short by a crash is dropped) and numbering continues after the last record on disk.
//!
//! Durability is best-effort and batched: the writer writes every record queued, fsyncs,
//! then takes the next batch. A crash of the process loses nothing written; a crash of the
//! machine loses at most the batch not yet fsynced (`durable_seq` says how far the disk is).
//! When the queue is full or the disk fails, the record stays in memory only and is counted
//! in `dropped` (`/metrics`, `/health`, `ListAudit`), with a warning in the log.
//!
//! What this module must not do: block or fail the request being recorded, keep more than its
//! bound, or record a secret (the layer decides what goes in; this module bounds every field).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qm_shared::limits::{
    AUDIT_BYTES_MIN, AUDIT_MESSAGE_LEN_MAX_BYTES, AUDIT_METHOD_LEN_MAX_BYTES, AUDIT_PEER_LEN_MAX_BYTES,
    AUDIT_QUEUE_MAX, AUDIT_REQUEST_LEN_MAX_BYTES, AUDIT_SEGMENTS, TOKEN_NAME_LEN_MAX_BYTES,
};
use serde::{Deserialize, Serialize};

/// gRPC codes that are denials.
const DENIED: [i32; 2] = [tonic::Code::Unauthenticated as i32, tonic::Code::PermissionDenied as i32];
/// How long [`AuditLog::flush`] waits for the writer.
const FLUSH_WAIT_MS_MAX: u64 = 5_000;

/// One call as it arrived and was answered, numbered and stamped by the node that recorded it
/// (one JSON line: the call's fields beside `seq`, `at_ms` and `node_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    pub node_id: u64,
    #[serde(flatten)]
    pub call: Call,
}

impl Record {
    pub fn denied(&self) -> bool {
        is_denial(self.call.code, &self.call.message)
    }
}

/// Whether an answer is a denial: UNAUTHENTICATED, PERMISSION_DENIED, or RESOURCE_EXHAUSTED
/// from a principal's write rate.
pub fn is_denial(code: i32, message: &str) -> bool {
    DENIED.contains(&code)
        || (code == tonic::Code::ResourceExhausted as i32 && message.starts_with(crate::api::rate::RULE))
}

/// What the layer saw of one call; [`AuditLog::record`] numbers, stamps and bounds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub principal: String,
    pub peer: String,
    pub method: String,
    pub request: String,
    /// gRPC status code (0: OK).
    pub code: i32,
    pub message: String,
}

/// Which records a listing wants; every filter given must match.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub since_ms: u64,
    pub since_seq: u64,
    pub principal: Option<String>,
    pub method: Option<String>,
    pub denied_only: bool,
    /// The newest this many matching records.
    pub limit: usize,
}

impl Query {
    fn matches(&self, r: &Record) -> bool {
        r.at_ms >= self.since_ms
            && r.seq >= self.since_seq
            && self.principal.as_ref().is_none_or(|p| *p == r.call.principal)
            && self.method.as_ref().is_none_or(|m| r.call.method.contains(m.as_str()))
            && (!self.denied_only || r.denied())
    }
}

/// A listing: the newest matching records, oldest first, and where the log stands.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub records: Vec<Record>,
    pub matched: u64,
    pub oldest_seq: u64,
    pub next_seq: u64,
    pub durable_seq: u64,
    pub dropped: u64,
    pub persistent: bool,
}

/// Where the log lives and how much of it is kept.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// `<data dir>/audit`; `None`: memory only.
    pub dir: Option<PathBuf>,
    /// Bytes of records kept (`AUDIT_BYTES_MIN..=AUDIT_BYTES_MAX`).
    pub bytes_max: u64,
}

/// `s` cut to at most `max` bytes at a character boundary, marked `…` when cut.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One segment of the log: its number, its first record, its size in bytes.
#[derive(Clone, Copy, Debug)]
struct Segment {
    index: u64,
    first_seq: u64,
    bytes: u64,
}

/// The kept records and the segments they are in (the same on disk and in memory).
#[derive(Debug)]
struct Ring {
    records: VecDeque<Record>,
    /// Never empty: the last is the one being written.
    segments: VecDeque<Segment>,
    segment_bytes: u64,
    next_seq: u64,
}

impl Ring {
    fn new(bytes_max: u64) -> Ring {
        let segment_bytes = bytes_max.max(AUDIT_BYTES_MIN) / AUDIT_SEGMENTS;
        let first = Segment { index: 1, first_seq: 1, bytes: 0 };
        Ring { records: VecDeque::new(), segments: VecDeque::from([first]), segment_bytes, next_seq: 1 }
    }

    /// Adds a record of `len` bytes: `(its segment, the oldest segment kept)`.
    fn push(&mut self, record: Record, len: u64) -> (u64, u64) {
        let last = *self.segments.back().expect("a segment");
        if last.bytes > 0 && last.bytes + len > self.segment_bytes {
            self.segments.push_back(Segment { index: last.index + 1, first_seq: record.seq, bytes: 0 });
        }
        let segment = self.segments.back_mut().expect("a segment");
        segment.bytes += len;
        let index = segment.index;
        self.records.push_back(record);
        self.trim();
        (index, self.segments.front().expect("a segment").index)
    }

    /// Forgets the oldest segments past `AUDIT_SEGMENTS` and their records.
    fn trim(&mut self) {
        while self.segments.len() as u64 > AUDIT_SEGMENTS {
            self.segments.pop_front();
        }
        let first = self.segments.front().expect("a segment").first_seq;
        while self.records.front().is_some_and(|r| r.seq < first) {
            self.records.pop_front();
        }
    }

    fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// What the writer and the readers share.
#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    durable_seq: AtomicU64,
}

impl Counters {
    /// Counts a record that did not reach the disk, warning on the first and then sparsely.
    fn drop_one(&self, seq: u64, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(seq, dropped = n, why, "audit record not written to disk (kept in memory only)");
        }
    }
}

/// What the writer thread is asked to do.
#[derive(Debug)]
enum ToDisk {
    Line { seq: u64, segment: u64, oldest: u64, line: String },
    Flush(SyncSender<()>),
}

/// A node's audit log. Cheap to record into from any thread.
#[derive(Debug)]
pub struct AuditLog {
    node_id: u64,
    ring: Mutex<Ring>,
    disk: Option<SyncSender<ToDisk>>,
    counters: Arc<Counters>,
    bytes_max: u64,
}

impl AuditLog {
    /// Opens the log: reads back what `config.dir` keeps and starts its writer, or starts
    /// empty in memory.
    pub fn open(node_id: u64, config: AuditConfig) -> std::io::Result<AuditLog> {
        let counters = Arc::new(Counters::default());
        let (ring, disk) = match &config.dir {
            None => (Ring::new(config.bytes_max), None),
            Some(dir) => {
                let ring = load(dir, config.bytes_max)?;
                counters.durable_seq.store(ring.next_seq - 1, Ordering::Relaxed);
                let (tx, rx) = sync_channel(AUDIT_QUEUE_MAX);
                let writer = Writer { dir: dir.clone(), file: None, counters: counters.clone(), failing: false };
                std::thread::Builder::new().name(format!("audit-{node_id}")).spawn(move || writer.run(rx))?;
                (ring, Some(tx))
            }
        };
        Ok(AuditLog { node_id, ring: Mutex::new(ring), disk, counters, bytes_max: config.bytes_max })
    }

    /// Records `call` answered at `now_ms`; returns its sequence number. Never blocks on the
    /// disk and never fails: a record the writer cannot take is counted as dropped.
    pub fn record(&self, now_ms: u64, call: Call) -> u64 {
        let mut ring = self.ring.lock().expect("audit lock poisoned");
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let call = Call {
            principal: bounded(&call.principal, TOKEN_NAME_LEN_MAX_BYTES),
            peer: bounded(&call.peer, AUDIT_PEER_LEN_MAX_BYTES),
            method: bounded(&call.method, AUDIT_METHOD_LEN_MAX_BYTES),
            request: bounded(&call.request, AUDIT_REQUEST_LEN_MAX_BYTES),
            code: call.code,
            message: bounded(&call.message, AUDIT_MESSAGE_LEN_MAX_BYTES),
        };
        let record = Record { seq, at_ms: now_ms, node_id: self.node_id, call };
        let mut line = serde_json::to_string(&record).expect("a record encodes");
        line.push('\n');
        let (segment, oldest) = ring.push(record, line.len() as u64);
        if let Some(disk) = &self.disk {
            match disk.try_send(ToDisk::Line { seq, segment, oldest, line }) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => self.counters.drop_one(seq, "the writer's queue is full"),
                Err(TrySendError::Disconnected(_)) => self.counters.drop_one(seq, "the writer has stopped"),
            }
        }
        seq
    }

    /// The newest `query.limit` records that match, oldest first, and where the log stands.
    pub fn list(&self, query: &Query) -> Listing {
        let ring = self.ring.lock().expect("audit lock poisoned");
        let mut matched = 0u64;
        let mut records = Vec::new();
        for r in ring.records.iter().rev().filter(|r| query.matches(r)) {
            matched += 1;
            if records.len() < query.limit {
                records.push(r.clone());
            }
        }
        records.reverse();
        Listing {
            records,
            matched,
            oldest_seq: ring.records.front().map_or(0, |r| r.seq),
            next_seq: ring.next_seq,
            durable_seq: self.durable_seq(),
            dropped: self.dropped(),
            persistent: self.disk.is_some(),
        }
    }

    /// Records that did not reach the disk since start.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// The newest record fsynced to disk (0: none, or memory only).
    pub fn durable_seq(&self) -> u64 {
        if self.disk.is_some() {
            self.counters.durable_seq.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// `(records kept, bytes kept, bound, next sequence number, on disk)`, for `/metrics` and `/health`.
    pub fn summary(&self) -> (u64, u64, u64, u64, bool) {
        let ring = self.ring.lock().expect("audit lock poisoned");
        (ring.records.len() as u64, ring.bytes(), self.bytes_max, ring.next_seq, self.disk.is_some())
    }

    /// Waits (bounded) until every record queued so far is written and fsynced.
    pub fn flush(&self) {
        let Some(disk) = &self.disk else { return };
        let (ack, done) = sync_channel(1);
        if disk.send(ToDisk::Flush(ack)).is_ok() && done.recv_timeout(Duration::from_millis(FLUSH_WAIT_MS_MAX)).is_err()
        {
            tracing::warn!("the audit log did not flush within {FLUSH_WAIT_MS_MAX} ms");
        }
    }
}

/// The file of segment `index`.
fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("audit-{index:012}.jsonl"))
}

/// Segment numbers in `dir`, oldest first.
fn segment_indexes(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(i) = name.strip_prefix("audit-").and_then(|n| n.strip_suffix(".jsonl")) {
            if let Ok(i) = i.parse() {
                out.push(i);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads back the newest segments of `dir` that fit `bytes_max` (and `AUDIT_SEGMENTS`),
/// deletes the older ones, and cuts a last line a crash left unfinished.
fn load(dir: &Path, bytes_max: u64) -> std::io::Result<Ring> {
    std::fs::create_dir_all(dir)?;
    let mut ring = Ring::new(bytes_max);
    let indexes = segment_indexes(dir)?;
    let mut kept = Vec::new();
    let mut total = 0u64;
    let mut full = false;
    // Newest first: once one segment does not fit, no older one is kept either.
    for &index in indexes.iter().rev() {
        let len = std::fs::metadata(segment_path(dir, index))?.len();
        full = full || (!kept.is_empty() && (kept.len() as u64 >= AUDIT_SEGMENTS || total + len > bytes_max));
        if full {
            std::fs::remove_file(segment_path(dir, index))?;
            continue;
        }
        total += len;
        kept.push(index);
    }
    kept.reverse();
    let Some(&newest) = kept.last() else { return Ok(ring) };
    ring.segments.clear();
    let mut unreadable = 0usize;
    for index in kept {
        let text = read_segment(&segment_path(dir, index), index == newest)?;
        let before = ring.records.len();
        for line in text.lines() {
            match serde_json::from_str::<Record>(line) {
                Ok(r) if r.seq >= ring.next_seq => {
                    ring.next_seq = r.seq + 1;
                    ring.records.push_back(r);
                }
                _ => unreadable += 1,
            }
        }
        let first_seq = ring.records.get(before).map_or(ring.next_seq, |r| r.seq);
        ring.segments.push_back(Segment { index, first_seq, bytes: text.len() as u64 });
    }
    if unreadable > 0 {
        tracing::warn!(unreadable, dir = %dir.display(), "audit log: lines that do not parse were skipped");
    }
    ring.trim();
    Ok(ring)
}

/// A segment's text; for the newest (`cut`), up to its last complete line, the file
/// shortened to match so that appending continues on a line of its own.
fn read_segment(path: &Path, cut: bool) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if cut && end < bytes.len() {
        tracing::warn!(path = %path.display(), cut = bytes.len() - end, "audit log: an unfinished last line was cut");
        OpenOptions::new().write(true).open(path)?.set_len(end as u64)?;
    }
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// The writer thread: appends lines to their segment files, deletes segments past the
/// bound, and fsyncs after each batch.
#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    file: Option<(u64, File)>,
    counters: Arc<Counters>,
    /// Whether the last write failed (a warning is logged when it starts and when it ends).
    failing: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<ToDisk>) {
        while let Ok(first) = rx.recv() {
            let mut acks = Vec::new();
            let mut last_seq = None;
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(message) = next {
                match message {
                    ToDisk::Line { seq, segment, oldest, line } => {
                        if self.write(segment, oldest, &line) {
                            last_seq = Some(seq);
                        } else {
                            self.counters.drop_one(seq, "the audit file could not be written");
                        }
                    }
                    ToDisk::Flush(ack) => acks.push(ack),
                }
                taken += 1;
                next = if taken < AUDIT_QUEUE_MAX { rx.try_recv().ok() } else { None };
            }
            self.sync(last_seq);
            for ack in acks {
                let _ = ack.send(());
            }
        }
    }

    /// Appends `line` to segment `segment`, opening it (and deleting segments before
    /// `oldest`) when it is new. False when the disk refused.
    fn write(&mut self, segment: u64, oldest: u64, line: &str) -> bool {
        let result = self.file_for(segment, oldest).and_then(|mut f| f.write_all(line.as_bytes()));
        if result.is_err() {
            self.file = None;
        }
        self.note(result)
    }

    /// The open file of segment `segment`; a new segment's is created after the one before
    /// it is fsynced and the segments before `oldest` are deleted.
    fn file_for(&mut self, segment: u64, oldest: u64) -> std::io::Result<&File> {
        if self.file.as_ref().is_none_or(|(i, _)| *i != segment) {
            if let Some((_, old)) = self.file.take() {
                old.sync_data()?;
            }
            for index in segment_indexes(&self.dir)?.into_iter().filter(|i| *i < oldest) {
                std::fs::remove_file(segment_path(&self.dir, index))?;
            }
            let file = OpenOptions::new().create(true).append(true).open(segment_path(&self.dir, segment))?;
            self.file = Some((segment, file));
        }
        Ok(&self.file.as_ref().expect("opened above").1)
    }

    /// Fsyncs what this batch wrote; the newest record written becomes durable.
    fn sync(&mut self, last_seq: Option<u64>) {
        let Some((_, file)) = self.file.as_ref() else { return };
        let result = file.sync_data();
        if self.note(result) {
            if let Some(seq) = last_seq {
                self.counters.durable_seq.store(seq, Ordering::Relaxed);
            }
        }
    }

    /// Logs the start and the end of a run of disk errors; true when `result` is ok.
    fn note(&mut self, result: std::io::Result<()>) -> bool {
        match (result, self.failing) {
            (Ok(()), false) => true,
            (Ok(()), true) => {
                self.failing = false;
                tracing::warn!(dir = %self.dir.display(), "audit log: writing to disk works again");
                true
            }
            (Err(e), failing) => {
                if !failing {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "audit log: writing to disk failed");
                }
                self.failing = true;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qm_shared::limits::AUDIT_RECORD_BYTES_MAX;

    fn call(i: u64) -> Call {
        Call {
            principal: if i % 2 == 0 { "ci".into() } else { "anonymous".into() },
            peer: "127.0.0.1:5000".into(),
            method: format!("/qm.v1.Acl/CreateToken{}", i % 3),
            request: format!("name=\"t{i}\""),
            code: if i % 2 == 0 { 0 } else { tonic::Code::PermissionDenied as i32 },
            message: String::new(),
        }
    }

    fn all(log: &AuditLog) -> Listing {
        log.list(&Query { limit: usize::MAX, ..Default::default() })
    }

    fn memory(bytes_max: u64) -> AuditLog {
        AuditLog::open(7, AuditConfig { dir: None, bytes_max }).expect("open")
    }

    fn on_disk(dir: &Path) -> AuditLog {
        AuditLog::open(7, AuditConfig { dir: Some(dir.to_path_buf()), bytes_max: AUDIT_BYTES_MIN }).expect("open")
    }

    /// A log on disk in `dir` holding records 1..=n, flushed.
    fn written(dir: &Path, n: u64) -> AuditLog {
        let log = on_disk(dir);
        for i in 1..=n {
            log.record(i, call(i));
        }
        log.flush();
        log
    }

    fn disk_bytes(dir: &Path) -> u64 {
        segment_indexes(dir)
            .expect("list")
            .iter()
            .map(|i| std::fs::metadata(segment_path(dir, *i)).expect("meta").len())
            .sum()
    }

    /// The bound holds and the oldest records go first, leaving an unbroken run of the newest.
    #[test]
    fn past_the_bound_the_oldest_segment_goes_and_the_oldest_sequence_moves_forward() {
        let log = memory(AUDIT_BYTES_MIN);
        let mut oldest = Vec::new();
        for i in 1..=2_000u64 {
            assert_eq!(log.record(i, call(i)), i);
            oldest.push(all(&log).oldest_seq);
        }
        let l = all(&log);
        assert!(l.oldest_seq > 1, "nothing was dropped: {}", l.oldest_seq);
        assert!(oldest.windows(2).all(|w| w[0] <= w[1]), "the oldest sequence never goes back");
        let seqs: Vec<u64> = l.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (l.oldest_seq..=2_000).collect::<Vec<_>>());
        let (records, bytes, ..) = log.summary();
        assert!(bytes <= AUDIT_BYTES_MIN, "{bytes} bytes kept");
        assert_eq!(records as usize, l.records.len());
        // Three segments filled to within a line of their size: the bound is used, not wasted.
        assert!(bytes >= (AUDIT_SEGMENTS - 1) * (AUDIT_BYTES_MIN / AUDIT_SEGMENTS - 256), "{bytes} bytes kept");
        assert_eq!((l.next_seq, l.durable_seq, l.persistent), (2_001, 0, false));
    }

    #[test]
    fn filters_combine_and_the_limit_keeps_the_newest() {
        let log = memory(AUDIT_BYTES_MIN);
        for i in 1..=30u64 {
            log.record(i * 1_000, call(i));
        }
        let q = |f: fn(&mut Query)| {
            let mut q = Query { limit: 100, ..Default::default() };
            f(&mut q);
            log.list(&q).records.iter().map(|r| r.seq).collect::<Vec<_>>()
        };
        assert_eq!(q(|q| q.since_ms = 28_000), vec![28, 29, 30]);
        assert_eq!(q(|q| q.since_seq = 29), vec![29, 30]);
        assert_eq!(q(|q| q.principal = Some("ci".into())).len(), 15);
        assert!(q(|q| q.denied_only = true).iter().all(|s| s % 2 == 1));
        assert_eq!(q(|q| q.method = Some("CreateToken0".into())), (1..=30).filter(|i| i % 3 == 0).collect::<Vec<_>>());
        assert_eq!(q(|q| q.limit = 2), vec![29, 30]);
        let l = log.list(&Query { limit: 2, denied_only: true, ..Default::default() });
        assert_eq!((l.matched, l.records.iter().map(|r| r.seq).collect::<Vec<_>>()), (15, vec![27, 29]));
    }

    #[test]
    fn every_field_is_bounded_whatever_it_holds() {
        let log = memory(AUDIT_BYTES_MIN);
        let nasty = "\u{1}\"\\".repeat(10_000);
        let c = Call {
            principal: nasty.clone(),
            peer: nasty.clone(),
            method: nasty.clone(),
            request: nasty.clone(),
            code: 7,
            message: "é".repeat(10_000),
        };
        log.record(1, c);
        let r = &all(&log).records[0].call;
        assert!(r.principal.len() <= TOKEN_NAME_LEN_MAX_BYTES && r.peer.len() <= AUDIT_PEER_LEN_MAX_BYTES);
        assert!(r.method.len() <= AUDIT_METHOD_LEN_MAX_BYTES && r.request.len() <= AUDIT_REQUEST_LEN_MAX_BYTES);
        assert!(r.message.len() <= AUDIT_MESSAGE_LEN_MAX_BYTES && r.message.ends_with('…'));
        let line = serde_json::to_string(&all(&log).records[0]).expect("encode");
        assert!((line.len() as u64) < AUDIT_RECORD_BYTES_MAX, "{} bytes", line.len());
    }

    /// Records come back after a restart, numbering goes on, and deleted segments stay deleted.
    #[test]
    fn records_survive_a_restart_within_the_bound_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = written(dir.path(), 1_500);
        let before = all(&log);
        assert_eq!(before.durable_seq, 1_500);
        drop(log);
        assert!(segment_indexes(dir.path()).expect("list").len() as u64 <= AUDIT_SEGMENTS);
        assert!(disk_bytes(dir.path()) <= AUDIT_BYTES_MIN);

        let log = on_disk(dir.path());
        let after = all(&log);
        assert_eq!(after.records, before.records);
        assert_eq!((after.oldest_seq, after.next_seq), (before.oldest_seq, 1_501));
        assert_eq!(log.record(2_000, call(1_501)), 1_501);
    }

    /// A node restarted with a lower bound keeps the newest segments that fit it, unbroken.
    #[test]
    fn a_lower_bound_at_restart_keeps_only_the_newest_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wide = AuditConfig { dir: Some(dir.path().to_path_buf()), bytes_max: 4 * AUDIT_BYTES_MIN };
        let log = AuditLog::open(7, wide).expect("open");
        for i in 1..=2_000u64 {
            log.record(i, call(i));
        }
        log.flush();
        drop(log);
        assert!(disk_bytes(dir.path()) > AUDIT_BYTES_MIN);

        let l = all(&on_disk(dir.path()));
        assert!(disk_bytes(dir.path()) <= AUDIT_BYTES_MIN, "{} bytes", disk_bytes(dir.path()));
        assert_eq!(l.records.iter().map(|r| r.seq).collect::<Vec<_>>(), (l.oldest_seq..=2_000).collect::<Vec<_>>());
        assert!(l.oldest_seq > 1 && l.next_seq == 2_001, "{} {}", l.oldest_seq, l.next_seq);
    }

    /// A crash in the middle of a line leaves it cut short: it is dropped, and the next record
    /// starts a line of its own.
    #[test]
    fn a_last_line_cut_short_is_dropped_and_appending_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(written(dir.path(), 3));
        let newest = *segment_indexes(dir.path()).expect("list").last().expect("a segment");
        let mut f = OpenOptions::new().append(true).open(segment_path(dir.path(), newest)).expect("open");
        f.write_all(b"{\"seq\":4,\"at_ms\":4,\"nod").expect("write");
        drop(f);

        let log = on_disk(dir.path());
        assert_eq!(all(&log).records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(log.record(5, call(4)), 4);
        log.flush();
        drop(log);
        let log = on_disk(dir.path());
        assert_eq!(all(&log).records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    }

    /// A disk that refuses writes never fails the caller: the record is kept in memory and
    /// counted as dropped.
    #[test]
    fn records_the_disk_refuses_are_counted_and_kept_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = dir.path().join("audit");
        let log = on_disk(&audit);
        std::fs::remove_dir_all(&audit).expect("remove the directory");
        std::fs::write(&audit, b"a file where the directory was").expect("block it");
        assert_eq!(log.record(1, call(1)), 1);
        log.flush();
        let l = all(&log);
        assert_eq!((l.dropped, l.durable_seq, l.records.len()), (1, 0, 1));
    }
}
