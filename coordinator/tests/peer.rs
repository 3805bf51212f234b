//! Against real coordinators: the gRPC services on loopback, Raft over them, the admin port.
//! `/livez` fails once Raft has stopped on a storage error.
//!
//! Every wait here is for an event (a metric, a watch) and bounded by `WAIT_MS_MAX` only so
//! that a broken build fails instead of hanging; nothing sleeps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use qm_coordinator::clock::SystemClock;
use qm_coordinator::node::{Node, NodeConfig};
use qm_coordinator::raft::mem_store::MemStore;
use qm_coordinator::raft::store::{Pair, Space, Store, StoreError, Write};
use qm_coordinator::state::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a test waits for an event before it fails.
const WAIT_MS_MAX: u64 = 120_000;

fn bound() -> Duration {
    Duration::from_millis(WAIT_MS_MAX)
}

/// Waits until `node` leads and its term's RestartLeases has committed.
async fn serving(node: &Node) {
    let m = node.raft.wait(Some(bound())).state(ServerState::Leader, "leader").await.unwrap();
    let mut restarted = node.restarted_term();
    tokio::time::timeout(bound(), restarted.wait_for(|t| *t >= m.current_term)).await.unwrap().unwrap();
}

fn open(label: &str) -> Command {
    Command::OpenSession { label: label.into(), ttl_ms: 60_000 }
}

/// A memory store whose writes fail once `failing` is set, like a disk gone read-only.
#[derive(Clone, Debug)]
struct FailingStore {
    inner: MemStore,
    failing: Arc<AtomicBool>,
}

impl FailingStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            let source = std::io::Error::other("injected: disk on fire");
            return Err(StoreError::Io { space: "log", source });
        }
        Ok(())
    }
}

impl Store for FailingStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn batch(&self, space: Space, writes: Vec<Write>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.batch(space, writes)
    }

    fn range(&self, space: Space, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StoreError> {
        self.inner.range(space, from, to, limit)
    }

    fn last(&self, space: Space) -> Result<Option<Pair>, StoreError> {
        self.inner.last(space)
    }

    fn remove_range(&self, space: Space, from: &[u8], to: Option<&[u8]>) -> Result<(), StoreError> {
        self.check()?;
        self.inner.remove_range(space, from, to)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.check()
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
}

/// `GET path` on the admin port: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livez_fails_with_the_reason_once_raft_stops_on_a_storage_error() {
    let failing = Arc::new(AtomicBool::new(false));
    let store = FailingStore { inner: MemStore::new(), failing: failing.clone() };
    let config = NodeConfig::single(1, "http://127.0.0.1:9".into(), None);
    let node = Node::start_with(config, Arc::new(SystemClock), store).await.unwrap();
    serving(&node).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(qm_coordinator::admin::serve(node.clone(), listener, async {
        let _ = stopped.await;
    }));
    assert_eq!(get(admin, "/livez").await, (200, "ok\n".to_string()));

    failing.store(true, Ordering::SeqCst);
    // The write cannot be stored: Raft stops rather than acknowledge it.
    assert!(node.propose(open("lost")).await.is_err());
    let stopped = node.raft.wait(Some(bound())).metrics(|m| m.running_state.is_err(), "raft stopped").await;
    assert!(stopped.is_ok(), "{stopped:?}");
    let (code, body) = get(admin, "/livez").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not live: raft stopped"), "{body}");
    assert!(body.contains("disk on fire"), "{body}");

    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
