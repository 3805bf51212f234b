//! Pinned regression seeds: every seed that once failed stays in this table and is run by
//! `sim/tests/cluster.rs` (and by the command in its row).
//!
//! | seed | nodes | chaos ms | focus | what it found | resolution |
//! |---|---|---|---|---|---|
//! | 7 | 3 | 10000 | | "two leaders in term 4" (n1 and n2) after n3 had been cut off: n3 granted T4-N1, then T4-N2 | not a bug: openraft's default mode orders votes by `LeaderId` = (term, node), so two leaders per term are legal; the election-safety checker now checks what openraft relies on (persisted votes never go backwards, one leader per `LeaderId`) |
//! | 175 | 3 | 20000 | leader-blink | stale read: n3, leader, applied 192, crashed for 314 ms losing its unflushed commit index, and came back as leader of its old term; a read at n2 got read index 191 from it | fixed: a leader serves read-index only once its term's RestartLeases has applied in this incarnation (`Node::local_read_index`) |

//! | 4 | 3 | 20000 | leader-return | leader-serves: n1, crashed as leader, came back as leader of its old term and proposed its RestartLeases, then caught up by installing a snapshot; elected again in term 4 it committed nothing for 15 s with every node up ("leader of term 4 has not restarted leases yet"): its leader duties still awaited the old term's write, which openraft never answers | fixed: every wait on a Raft write is bounded and given up when its term ends (`raft::bounded::within_term`); a leader whose RestartLeases does not commit in 5 s steps down |

//! | 261 | 3 | 20000 | | leader-serves (first seen when that checker came, with 235, 288 and 495 in `--seeds 500`): after partitions that dropped segments healed, every node up, nothing committed for 15 s: n1 at term 11 while n3 led term 2 and never heard of it, n3's appends to n2 unanswered. The peer connections were stalled (segments lost; HTTP/2 keepalive notices only after 10 + 20 s) and every RPC on them timed out | fixed: a peer RPC that misses its deadline dials the peer afresh; so do the client library and the forwarding path |

/// A run that must stay clean: `qm sim cluster --seed S --nodes N --chaos-ms C [--focus F]`.
#[derive(Clone, Copy, Debug)]
pub struct Pinned {
    pub seed: u64,
    pub nodes: u64,
    pub chaos_ms: u64,
    pub focus: Option<&'static str>,
}

pub const SEEDS: &[Pinned] = &[
    Pinned { seed: 7, nodes: 3, chaos_ms: 10_000, focus: None },
    Pinned { seed: 175, nodes: 3, chaos_ms: 20_000, focus: Some("leader-blink") },
    Pinned { seed: 4, nodes: 3, chaos_ms: 20_000, focus: Some("leader-return") },
    Pinned { seed: 261, nodes: 3, chaos_ms: 20_000, focus: None },
];
