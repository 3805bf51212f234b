//! The nemesis: faults drawn from the seed, injected between simulation steps, each undone
//! after its own duration; at the heal every fault is undone at once.
//!
//! | fault | how |
//! |---|---|
//! | isolate a node / the leader | every link of the node held (TCP's view of a partition: data waits and is retransmitted after it heals) or dropped (segments lost: the connection stalls until HTTP/2 keepalive gives up) |
//! | one-way partition | `partition_oneway` between two coordinators |
//! | message delay | a link's latency raised to hundreds of ms |
//! | crash at a vote | a node that has just voted in a new term crashes before the winner's first append reaches it |
//! | leader blink | the leader crashed and restarted within the shortest election timeout: it resumes as leader of its old term with the commit index it last persisted |
//! | leader return | the leader crashed while the others run ahead and compact their logs (`SnapshotNow`), restarted (it resumes as leader of its old term and proposes in it, then catches up by installing a snapshot), and leadership transferred back to it; then a quiet spell, in which it must serve |
//! | crash + restart | the host's runtime dropped, its store loses a random suffix of the unflushed writes; restarted after a short or a long outage (long: followers come back through a snapshot) |
//! | clock jump / skew | the node's [`SimClock`] stepped (±) or run fast/slow |
//! | leadership transfer | `Cluster.TransferLeader` through the control host |
//! | worker crash + restart | the worker host's runtime dropped; a new incarnation registers |
//! | worker isolation | every link of a worker held for longer than its session: the coordinator requeues its tasks while its agents run on (zombies) |
//!
//! Duplicated requests are the workload's (it resends a request whose answer it "lost").
//! Message loss in the datagram sense does not exist on TCP; it is modelled as delay
//! (held links) and as lost segments (dropped links), see above.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use qm_shared::client::Client;
use qm_shared::pb::v1 as pb;

use super::clock::SimClock;
use super::net;
use super::options::Options;
use super::rng::Rng;
use super::store::SimStore;
use super::world::{lock, now_ms, ControlOp, Phase, Shared};

/// Faults in force at once at most (a new one waits).
pub const FAULTS_ACTIVE_MAX: usize = 3;

/// How long the nemesis keeps quiet after a leader return: longer than the serving-leader
/// bound, so that invariant sees whether the returned leader serves.
pub const RETURN_QUIET_MS: u64 = super::invariants::serving::SERVE_WITHIN_MS + 3_000;
/// Longest a leader return waits for the cluster to run ahead of the crashed leader.
pub const RETURN_WAIT_MS_MAX: u64 = 30_000;
/// Writes the control host makes at most to run the cluster ahead.
pub const RUN_AHEAD_WRITES_MAX: u64 = 4_000;
/// Concurrent writers running the cluster ahead (each write its own entry, mostly: the
/// leader keeps four entries in flight).
const RUN_AHEAD_WRITERS: u64 = 4;

/// Something to undo (or do) later.
#[derive(Clone, Debug)]
enum Undo {
    /// An administrative call for the control host (a scenario's later step).
    Control(Vec<ControlOp>),
    Repair(String, String),
    Release(String, String),
    RepairOneway(String, String),
    Latency(String, String),
    Restart(u64),
    /// Restart node `id` with every link of its held for `held_ms`, once the control host has
    /// made `after` calls (or at `until` regardless), then transfer leadership back to it.
    RestartHeld {
        id: u64,
        held_ms: u64,
        after: u64,
        until: u64,
    },
    RestartWorker(String),
    Rate(u64),
}

/// The fault injector of one run.
#[derive(Debug)]
pub struct Nemesis {
    rng: Rng,
    opts: Options,
    next_at_ms: u64,
    undo: BTreeMap<u64, Vec<Undo>>,
    crashed: BTreeSet<u64>,
    crashed_workers: BTreeSet<String>,
    pub stores: BTreeMap<u64, SimStore>,
    pub clocks: BTreeMap<u64, SimClock>,
    /// Faults injected, by kind.
    pub injected: BTreeMap<&'static str, u64>,
    hosts: Vec<String>,
    /// Each node's vote as last seen, to notice a fresh (uncommitted) vote.
    votes: BTreeMap<u64, (u64, Option<u64>)>,
    /// Administrative calls handed to the control host so far.
    control_asked: u64,
    /// Since when every coordinator has been up with every link of theirs intact (no crash,
    /// partition, held link or added delay in force); `None` while one is.
    pub healthy_since_ms: Option<u64>,
}

impl Undo {
    /// Whether this fault, while in force, takes a coordinator down or cuts or slows a link of
    /// one (worker faults, clock faults and pending administrative calls do not).
    fn disturbs_coordinators(&self) -> bool {
        let coordinator = |h: &str| h.starts_with('n');
        match self {
            Undo::Repair(a, b) | Undo::Release(a, b) | Undo::RepairOneway(a, b) | Undo::Latency(a, b) => {
                coordinator(a) || coordinator(b)
            }
            Undo::Restart(_) | Undo::RestartHeld { .. } => true,
            Undo::RestartWorker(_) | Undo::Rate(_) | Undo::Control(_) => false,
        }
    }
}

impl Nemesis {
    pub fn new(
        opts: &Options,
        stores: BTreeMap<u64, SimStore>,
        clocks: BTreeMap<u64, SimClock>,
        hosts: Vec<String>,
    ) -> Nemesis {
        let mut rng = Rng::new(opts.seed).fork(2);
        let first = rng.range(1_000, 3_000);
        Nemesis {
            rng,
            opts: opts.clone(),
            next_at_ms: first,
            undo: BTreeMap::new(),
            crashed: BTreeSet::new(),
            crashed_workers: BTreeSet::new(),
            stores,
            clocks,
            injected: BTreeMap::new(),
            hosts,
            votes: BTreeMap::new(),
            control_asked: 0,
            healthy_since_ms: Some(0),
        }
    }

    pub fn total(&self) -> u64 {
        self.injected.values().sum()
    }

    fn count(&mut self, kind: &'static str) {
        *self.injected.entry(kind).or_default() += 1;
    }

    fn active(&self) -> usize {
        self.undo.values().map(Vec::len).sum()
    }

    fn later(&mut self, at: u64, u: Undo) {
        self.undo.entry(at).or_default().push(u);
    }

    /// The leader as the live nodes see it (the highest term's).
    fn leader(shared: &Shared) -> Option<u64> {
        let w = lock(shared);
        w.nodes
            .values()
            .map(|n| n.metrics())
            .filter(|m| m.state == openraft::ServerState::Leader)
            .max_by_key(|m| m.current_term)
            .map(|m| m.id)
    }

    /// Runs before each step: undoes what is due, and injects the next fault when it is time.
    pub fn before_step(&mut self, sim: &mut turmoil::Sim<'_>, t: u64, shared: &Shared) {
        self.step_faults(sim, t, shared);
        let disturbed = !self.crashed.is_empty() || self.undo.values().flatten().any(Undo::disturbs_coordinators);
        self.healthy_since_ms = match (disturbed, self.healthy_since_ms) {
            (true, _) => None,
            (false, None) => Some(t),
            (false, since) => since,
        };
    }

    fn step_faults(&mut self, sim: &mut turmoil::Sim<'_>, t: u64, shared: &Shared) {
        let due: Vec<u64> = self.undo.range(..=t).map(|(k, _)| *k).collect();
        for k in due {
            for u in self.undo.remove(&k).unwrap_or_default() {
                self.apply_undo(sim, t, shared, u);
            }
        }
        if !self.opts.faults || lock(shared).phase != Phase::Chaos {
            return;
        }
        self.crash_at_vote(sim, t, shared);
        if t < self.next_at_ms {
            return;
        }
        self.next_at_ms = t + self.rng.range(self.opts.fault_gap_ms.0, self.opts.fault_gap_ms.1);
        if self.active() >= FAULTS_ACTIVE_MAX {
            return;
        }
        self.inject(sim, t, shared);
    }

    /// A deposed leader that catches up by snapshot and is then elected again (see the table
    /// in the module docs). Needs every coordinator up, so that crashing the leader is allowed.
    ///
    /// ```text
    ///   crash L ─▶ control: run ahead (snapshot_logs + 100 entries), transfer to a survivor
    ///             (the leader elected meanwhile keeps the log L needs: its replication to L is
    ///             in flight from where L was), snapshot every survivor
    ///         ─▶ once those are done: restart L with its links held (it resumes as leader of
    ///             its old term and proposes in it), release, transfer back to L ─▶ quiet
    /// ```
    fn leader_return(&mut self, sim: &mut turmoil::Sim<'_>, t: u64, shared: &Shared) {
        let Some(id) = Nemesis::leader(shared) else { return };
        if !self.crashed.is_empty() || self.opts.nodes < 3 {
            return;
        }
        let down = self.rng.range(1_000, 3_000);
        self.crash(sim, t, shared, id, down, "leader-return");
        if !self.crashed.contains(&id) {
            return;
        }
        let mut ops = vec![ControlOp::RunAhead(self.opts.snapshot_logs + 100), ControlOp::Transfer(None)];
        ops.extend((1..=self.opts.nodes).filter(|n| *n != id).map(ControlOp::Snapshot));
        let after = self.control(shared, t, ops);
        let held_ms = self.rng.range(200, 800);
        self.undo.entry(t + down).or_default().retain(|u| !matches!(u, Undo::Restart(n) if *n == id));
        self.later(t + down, Undo::RestartHeld { id, held_ms, after, until: t + RETURN_WAIT_MS_MAX });
        self.next_at_ms = t + RETURN_WAIT_MS_MAX;
    }

    /// Hands `ops` to the control host; returns how many control calls will have been made
    /// once they are done.
    fn control(&mut self, shared: &Shared, t: u64, ops: Vec<ControlOp>) -> u64 {
        let mut w = lock(shared);
        w.trace.event(t, "nemesis", format_args!("control {ops:?}"));
        self.control_asked += ops.len() as u64;
        w.control.extend(ops);
        self.control_asked
    }

    /// Crashes a node that has just cast a vote in a new term, before the winner's first
    /// append (whose flush would also cover the vote) — the moment a vote that is not
    /// durable on its own would be lost.
    fn crash_at_vote(&mut self, sim: &mut turmoil::Sim<'_>, t: u64, shared: &Shared) {
        let fresh: Vec<u64> = {
            let w = lock(shared);
            let mut fresh = Vec::new();
            for (id, node) in &w.nodes {
                let v = node.metrics().vote;
                let now = (v.leader_id.term, v.leader_id.voted_for());
                let before = self.votes.insert(*id, now);
                if before.is_some_and(|b| b != now) && !v.committed && v.leader_id.voted_for() != Some(*id) {
                    fresh.push(*id);
                }
            }
            fresh
        };
        for id in fresh {
            if self.rng.chance(self.opts.vote_crash_pct) {
                let down = self.rng.range(100, 1_500);
                self.crash(sim, t, shared, id, down, "crash-at-vote");
            }
        }
    }

    /// Crashes coordinator `id` for `down` ms (its store keeps a random prefix of what it had
    /// not flushed), unless that would take down a majority.
    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, t: u64, shared: &Shared, id: u64, down: u64, kind: &'static str) {
        let n = self.opts.nodes;
        if self.crashed.contains(&id) || self.crashed.len() + 1 > ((n - 1) / 2).max(1) as usize {
            return;
        }
        let store = self.stores[&id].clone();
        let unflushed = store.unflushed();
        let keep = self.rng.range(0, unflushed as u64 + 1) as usize;
        lock(shared).nodes.remove(&id);
        self.votes.remove(&id);
        sim.crash(net::node_host(id).as_str());
        let lost = store.crash(keep);
        self.crashed.insert(id);
        self.later(t + down, Undo::Restart(id));
        lock(shared).trace.event(
            t,
            "nemesis",
            format_args!("{kind} n{id} down {down}ms lost {lost} of {unflushed} unflushed writes"),
        );
        self.count(kind);
    }

    fn node(&mut self) -> u64 {
        self.rng.range(1, self.opts.nodes + 1)
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, t: u64, shared: &Shared) {
        let n = self.opts.nodes;
        let kind = match self.opts.focus {
            Some(f) if self.rng.chance(super::options::FOCUS_PCT) => f.draw,
            _ => self.rng.range(0, 100),
        };
        let dur = self.rng.range(500, 6_000);
        let trace = |what: &str, detail: std::fmt::Arguments<'_>| {
            lock(shared).trace.event(t, "nemesis", format_args!("{what} {detail}"))
        };
        match kind {
            0..=19 => {
                let target = if self.rng.chance(50) { Nemesis::leader(shared).unwrap_or(1) } else { self.node() };
                let me = net::node_host(target);
                let hold = self.rng.chance(50);
                let others: Vec<String> = self.hosts.iter().filter(|h| **h != me).cloned().collect();
                for o in &others {
                    if hold {
                        sim.hold(me.as_str(), o.as_str());
                        self.later(t + dur, Undo::Release(me.clone(), o.clone()));
                    } else {
                        sim.partition(me.as_str(), o.as_str());
                        self.later(t + dur, Undo::Repair(me.clone(), o.clone()));
                    }
                }
                trace("isolate", format_args!("{me} {} for {dur}ms", if hold { "held" } else { "dropped" }));
                self.count("isolate");
            }
            20..=29 if n > 1 => {
                let a = self.node();
                let b = (a % n) + 1;
                let (a, b) = (net::node_host(a), net::node_host(b));
                sim.partition_oneway(a.as_str(), b.as_str());
                self.later(t + dur, Undo::RepairOneway(a.clone(), b.clone()));
                trace("oneway", format_args!("{a}->{b} for {dur}ms"));
                self.count("oneway");
            }
            30..=41 => {
                let a = net::node_host(self.node());
                let b = self.rng.pick(&self.hosts).clone();
                if a != b {
                    let ms = self.rng.range(50, 600);
                    sim.set_link_max_message_latency(a.as_str(), b.as_str(), Duration::from_millis(ms));
                    self.later(t + dur, Undo::Latency(a.clone(), b.clone()));
                    trace("delay", format_args!("{a}<->{b} up to {ms}ms for {dur}ms"));
                    self.count("delay");
                }
            }
            42..=61 => {
                let id = if self.rng.chance(30) { Nemesis::leader(shared).unwrap_or(1) } else { self.node() };
                let long = self.rng.chance(25);
                let down = if long { self.rng.range(8_000, 15_000) } else { self.rng.range(200, 3_000) };
                self.crash(sim, t, shared, id, down, if long { "crash-long" } else { "crash" });
            }
            62..=71 => {
                let id = self.node();
                let delta = self.rng.range(100, 30_000) as i64 * if self.rng.chance(50) { 1 } else { -1 };
                self.clocks[&id].jump(delta);
                trace("clock-jump", format_args!("n{id} {delta:+}ms"));
                self.count("clock-jump");
            }
            72..=81 => {
                let id = self.node();
                let ppm = self.rng.range(10_000, 500_000) as i64 * if self.rng.chance(50) { 1 } else { -1 };
                self.clocks[&id].set_rate(t, ppm);
                self.later(t + dur, Undo::Rate(id));
                trace("clock-rate", format_args!("n{id} {ppm:+}ppm for {dur}ms"));
                self.count("clock-rate");
            }
            82..=88 => {
                let to = if self.rng.chance(50) { Some(self.node()) } else { None };
                self.control(shared, t, vec![ControlOp::Transfer(to)]);
                trace("transfer", format_args!("to {to:?}"));
                self.count("transfer");
            }
            89..=92 if self.opts.workers > 0 => {
                let w = format!("w{}", self.rng.range(1, self.opts.workers + 1));
                if self.crashed_workers.contains(&w) {
                    return;
                }
                let down = self.rng.range(500, 8_000);
                sim.crash(w.as_str());
                self.crashed_workers.insert(w.clone());
                self.later(t + down, Undo::RestartWorker(w.clone()));
                trace("worker-crash", format_args!("{w} down {down}ms"));
                self.count("worker-crash");
            }
            93..=95 if self.opts.workers > 0 => {
                // Longer than a session: the coordinator requeues its tasks and frees their
                // leases while its agents keep running (zombies once it is back).
                let w = format!("w{}", self.rng.range(1, self.opts.workers + 1));
                let dur = self.opts.session_ttl_ms + self.rng.range(500, 5_000);
                for o in self.hosts.clone().iter().filter(|h| **h != w) {
                    sim.hold(w.as_str(), o.as_str());
                    self.later(t + dur, Undo::Release(w.clone(), o.clone()));
                }
                trace("worker-isolate", format_args!("{w} for {dur}ms"));
                self.count("worker-isolate");
            }
            98..=99 => self.leader_return(sim, t, shared),
            96..=97 => {
                // Down for less than any election timeout: the leader comes back as leader of
                // its old term (its vote was committed), with the commit index it last persisted.
                let Some(id) = Nemesis::leader(shared) else { return };
                let shortest = self.opts.election_ms.iter().copied().min().unwrap_or(300);
                let down = self.rng.range(20, shortest.max(40));
                self.crash(sim, t, shared, id, down, "leader-blink");
            }
            _ => {
                // A quiet spell: the cluster runs undisturbed for a while.
                trace("quiet", format_args!("{dur}ms"));
                self.next_at_ms = t + dur;
            }
        }
    }

    fn apply_undo(&mut self, sim: &mut turmoil::Sim<'_>, t: u64, shared: &Shared, u: Undo) {
        match u {
            Undo::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
            Undo::Release(a, b) => sim.release(a.as_str(), b.as_str()),
            Undo::RepairOneway(a, b) => sim.repair_oneway(a.as_str(), b.as_str()),
            Undo::Latency(a, b) => {
                sim.set_link_max_message_latency(a.as_str(), b.as_str(), Duration::from_millis(self.opts.latency_ms.1))
            }
            Undo::Restart(id) => {
                if self.crashed.remove(&id) {
                    sim.bounce(net::node_host(id).as_str());
                    lock(shared).trace.event(t, "nemesis", format_args!("restart n{id}"));
                }
            }
            Undo::RestartHeld { id, held_ms, after, until } => {
                if lock(shared).control_done < after && t < until && lock(shared).phase == Phase::Chaos {
                    self.later(t + 100, Undo::RestartHeld { id, held_ms, after, until });
                } else if self.crashed.remove(&id) {
                    let me = net::node_host(id);
                    sim.bounce(me.as_str());
                    for o in self.hosts.clone().iter().filter(|h| **h != me) {
                        sim.hold(me.as_str(), o.as_str());
                        self.later(t + held_ms, Undo::Release(me.clone(), o.clone()));
                    }
                    lock(shared).trace.event(t, "nemesis", format_args!("restart n{id}, links held {held_ms}ms"));
                    let back_at = t + held_ms + self.rng.range(1_000, 3_000);
                    self.later(back_at, Undo::Control(vec![ControlOp::Transfer(Some(id))]));
                    self.next_at_ms = self.next_at_ms.max(back_at + RETURN_QUIET_MS);
                }
            }
            Undo::RestartWorker(w) => {
                if self.crashed_workers.remove(&w) {
                    sim.bounce(w.as_str());
                    lock(shared).trace.event(t, "nemesis", format_args!("restart {w}"));
                }
            }
            Undo::Rate(id) => self.clocks[&id].set_rate(t, 0),
            Undo::Control(ops) => {
                self.control(shared, t, ops);
            }
        }
    }

    /// Undoes every fault in force: links repaired, crashed nodes restarted, clocks at rate.
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, t: u64, shared: &Shared) {
        let all: Vec<Undo> = std::mem::take(&mut self.undo).into_values().flatten().collect();
        for u in all {
            self.apply_undo(sim, t, shared, u);
        }
        for id in std::mem::take(&mut self.crashed) {
            sim.bounce(net::node_host(id).as_str());
        }
        for w in std::mem::take(&mut self.crashed_workers) {
            sim.bounce(w.as_str());
        }
        lock(shared).trace.event(t, "nemesis", format_args!("heal"));
    }
}

/// The control host: makes the administrative calls the nemesis asks for (leadership
/// transfers, snapshots), in order, through the real client library.
pub async fn control(opts: Options, shared: Shared) -> turmoil::Result {
    let endpoints: Vec<String> = (1..=opts.nodes).map(net::node_endpoint).collect();
    let client = Client::with_connector(&endpoints, net::connector())?;
    let per_node: BTreeMap<u64, Client> = (1..=opts.nodes)
        .map(|id| Ok((id, Client::with_connector(&[net::node_endpoint(id)], net::connector())?)))
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    for _ in 0..10_000_000u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let next = {
            let mut w = lock(&shared);
            if w.phase == Phase::Done {
                return Ok(());
            }
            if w.control.is_empty() {
                None
            } else {
                Some(w.control.remove(0))
            }
        };
        match next {
            None => {}
            Some(ControlOp::Transfer(to)) => {
                let answer = client.transfer_leader(pb::TransferLeaderRequest { to_node_id: to }).await;
                let text = match answer {
                    Ok(r) => format!("leader={:?} term={}", r.leader_id, r.term),
                    Err(e) => format!("failed {:?}", e.code()),
                };
                lock(&shared).trace.event(now_ms(), "transfer", format_args!("to {to:?}: {text}"));
            }
            Some(ControlOp::RunAhead(entries)) => {
                let text = run_ahead(&client, entries).await;
                lock(&shared).trace.event(now_ms(), "run-ahead", format_args!("{entries} entries: {text}"));
            }
            Some(ControlOp::Snapshot(id)) => {
                let answer = per_node[&id].snapshot_now(pb::SnapshotNowRequest { wait: true }).await;
                let text = match answer {
                    Ok(r) => format!("at index {}", r.snapshot_index),
                    Err(e) => format!("failed {:?}", e.code()),
                };
                lock(&shared).trace.event(now_ms(), "snapshot-now", format_args!("n{id}: {text}"));
            }
        }
        if next.is_some() {
            lock(&shared).control_done += 1;
        }
    }
    Ok(())
}

/// Writes (a session opened and closed, two entries) from a few concurrent writers until the
/// cluster has applied `entries` more, or `RUN_AHEAD_WRITES_MAX` writes were made.
async fn run_ahead(client: &Client, entries: u64) -> String {
    let applied = |s: Result<pb::StatusResponse, tonic::Status>| s.map_or(0, |s| s.applied_index);
    let start = applied(client.status().await);
    let writers = (0..RUN_AHEAD_WRITERS).map(|w| {
        let client = client.clone();
        async move {
            let mut written = 0u64;
            for i in 0..RUN_AHEAD_WRITES_MAX / RUN_AHEAD_WRITERS / 2 {
                if i % 16 == 0 && applied(client.status().await) >= start + entries {
                    break;
                }
                if let Ok(s) = client.open_session(&format!("ahead-{w}-{i}"), 60_000).await {
                    written += 1 + u64::from(client.close_session(s.session_id).await.is_ok());
                }
            }
            written
        }
    });
    let written: u64 = futures::future::join_all(writers).await.into_iter().sum();
    format!("{written} writes, applied {start} -> {}", applied(client.status().await))
}
