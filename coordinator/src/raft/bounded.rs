//! Bounded waits on Raft: every wait on a write has a deadline and an owner, the term it was
//! made in.
//!
//! ```text
//!   within_term(metrics, wait_ms, fut)
//!      ├─ fut resolves                              ─▶ Ok(output)
//!      ├─ the term ends (new term, no longer leader) ─▶ Err(Abandoned::TermEnded)
//!      ├─ Raft shuts down (metrics closed)           ─▶ Err(Abandoned::Shutdown)
//!      └─ wait_ms pass                               ─▶ Err(Abandoned::TimedOut)
//! ```
//!
//! openraft answers a pending `client_write` only when its entry is applied or truncated by
//! a conflicting append. A leader deposed before its entry committed, which then catches up
//! by installing a snapshot, does neither: the answer never comes. Whoever waits on a write
//! must therefore give up when the term it proposed in ends; the write may still have been
//! committed by the next leader, so an abandoned write's outcome is unknown, never "failed".

use std::future::Future;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;

use super::RaftMetrics;

/// Longest any wait on a proposal lasts on a leader that stays leader (a healthy write
/// commits in milliseconds; this bounds a leader that cannot reach a quorum).
pub const PROPOSAL_WAIT_MS_MAX: u64 = 10_000;

/// Why a wait on Raft was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Abandoned {
    /// The term the wait belonged to ended: a new term began, or this node stopped leading.
    #[error("term {term} ended before the write was answered; it may or may not have been applied")]
    TermEnded { term: u64 },
    /// The deadline passed while this node still led the same term.
    #[error("not answered within {wait_ms} ms in term {term}; it may still be applied")]
    TimedOut { term: u64, wait_ms: u64 },
    /// Raft stopped.
    #[error("raft stopped before the write was answered")]
    Shutdown,
}

/// Runs `fut` until it resolves, the term current at the call ends, Raft stops, or `wait_ms`
/// pass, whichever comes first.
///
/// The term is the one current when this is called. If this node is the leader then, the
/// wait also ends when it stops leading (it stepped down, or learned of a newer term). On a
/// non-leader only a term change ends it: its writes are answered at once with a leader hint.
pub async fn within_term<F: Future>(
    mut metrics: watch::Receiver<RaftMetrics>,
    wait_ms: u64,
    fut: F,
) -> Result<F::Output, Abandoned> {
    let (term, leading) = {
        let m = metrics.borrow_and_update();
        (m.current_term, m.state == ServerState::Leader)
    };
    let ended = async {
        match metrics.wait_for(|m| m.current_term != term || (leading && m.state != ServerState::Leader)).await {
            Ok(_) => Abandoned::TermEnded { term },
            Err(_) => Abandoned::Shutdown,
        }
    };
    tokio::select! {
        biased;
        out = fut => Ok(out),
        why = ended => Err(why),
        _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => Err(Abandoned::TimedOut { term, wait_ms }),
    }
}
