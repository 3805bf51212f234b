//! `check_jobs`: the invariants of work items, budgets, the ledger and the artifact cache,
//! asserted after every apply in debug builds and after every restore, beside the lock
//! table's. A failure here is a bug, so it panics naming what broke.
//!
//! Checked: ended items are indexed by their end and within their retention bound; every
//! task link points at a pass that names the task back; every active pass has a live task
//! of its own, and the passes it comes after have passed their gates; the ledger's totals
//! equal the sum of its entries while nothing has been evicted (and are never below it);
//! a budget's spent money equals its scope's ledger entries since its period began, and its
//! committed money the forecasts of its running tasks; the artifact cache's byte count is
//! the sum of its artifacts and within its bound, and its eviction orders index every entry
//! once.

use std::collections::{BTreeMap, BTreeSet};

use qm_shared::limits::{
    ARTIFACTS_MAX, ARTIFACT_BYTES_TOTAL_MAX, BUDGETS_MAX, JOBS_ENDED_RETAINED_MAX, LEDGER_ENTRIES_MAX,
};

use crate::state::{Scope, State};

use super::*;

impl State {
    /// Checks the invariants of work items, budgets, the ledger and the cache.
    pub(in crate::state) fn check_jobs(&self) {
        self.check_job_records();
        self.check_passes();
        self.check_ledger();
        self.check_budgets();
        self.jobs.check_cache();
    }

    fn check_job_records(&self) {
        let j = &self.jobs;
        assert!(j.ended.len() <= JOBS_ENDED_RETAINED_MAX, "{} ended items retained", j.ended.len());
        for (at, id) in &j.ended {
            let job = j.jobs.get(id).unwrap_or_else(|| panic!("ended index names unknown {id}"));
            assert_eq!(job.ended_at, Some(*at), "{id} is indexed as ended at {at}");
            assert_ne!(job.status, JobStatus::Running, "{id} is running and indexed as ended");
        }
        for (id, job) in &j.jobs {
            assert_eq!(job.id, *id);
            assert!(id.0 <= j.next_job, "{id} is past the last id {}", j.next_job);
            assert_eq!(job.passes.len(), job.spec.workflow.passes.len(), "{id} has a state per pass");
            match job.ended_at {
                Some(at) => assert!(j.ended.contains(&(at, *id)), "ended {id} missing from the ended index"),
                None => assert_eq!(job.status, JobStatus::Running, "{id} ended without an end time"),
            }
        }
        for (task, (id, i, kind)) in &j.by_task {
            let job = j.jobs.get(id).unwrap_or_else(|| panic!("{task} links to unknown {id}"));
            let pass = job.passes.get(*i).unwrap_or_else(|| panic!("{task} links to pass {i} of {id}"));
            let named = match kind {
                Kind::Work => pass.task,
                Kind::Review => pass.review,
            };
            assert!(self.tasks.get(*task).is_some(), "{task} of {id} is linked but forgotten");
            // A pass names its latest task; earlier runs' tasks stay linked for their reports.
            if named == Some(*task) {
                continue;
            }
            assert!(named.is_none_or(|n| n > *task), "{id} pass {} names {named:?} before {task}", pass.name);
        }
    }

    fn check_passes(&self) {
        for (id, job) in &self.jobs.jobs {
            for (i, p) in job.passes.iter().enumerate() {
                let live = |t: Option<TaskId>, kind: &str| {
                    let t = t.unwrap_or_else(|| panic!("{id} pass {} is {:?} with no {kind} task", p.name, p.status));
                    let task = self.tasks.get(t).unwrap_or_else(|| panic!("{id} pass {}: {t} unknown", p.name));
                    assert!(!task.status.ended(), "{id} pass {} is {:?} and its {t} ended", p.name, p.status);
                    assert_eq!(self.jobs.by_task.get(&t).map(|l| (l.0, l.1)), Some((*id, i)), "{t} links back");
                };
                match p.status {
                    PassStatus::Queued | PassStatus::Running => live(p.task, "work"),
                    PassStatus::Reviewing => live(p.review, "review"),
                    _ => {}
                }
                if p.status.active() || p.status == PassStatus::AwaitingHuman {
                    assert_eq!(job.status, JobStatus::Running, "{id} ended with pass {} {:?}", p.name, p.status);
                    for after in &job.spec.workflow.passes[i].after {
                        let done = job.passes.iter().any(|q| &q.name == after && q.status.done());
                        assert!(done, "{id} pass {} is {:?} before {after} passed its gate", p.name, p.status);
                    }
                }
            }
        }
    }

    fn check_ledger(&self) {
        let j = &self.jobs;
        assert!(j.ledger.len() <= LEDGER_ENTRIES_MAX, "{} ledger entries", j.ledger.len());
        let (mut money, mut saved) = (0u64, 0u64);
        for (seq, e) in &j.ledger {
            assert_eq!(e.seq, *seq);
            assert!(*seq <= j.ledger_seq, "entry {seq} past the ledger's sequence {}", j.ledger_seq);
            money = money.saturating_add(e.money_micros);
            saved = saved.saturating_add(e.saved_micros);
        }
        let complete = j.ledger.first_key_value().is_none_or(|(seq, _)| *seq == 1);
        if complete && j.ledger.len() as u64 == j.ledger_seq {
            assert_eq!(j.total_micros, money, "ledger total against its entries");
            assert_eq!(j.saved_micros, saved, "ledger savings against its entries");
        } else {
            assert!(j.total_micros >= money, "ledger total below its retained entries");
            assert!(j.saved_micros >= saved, "ledger savings below its retained entries");
        }
    }

    fn check_budgets(&self) {
        let j = &self.jobs;
        assert!(j.budget_count() <= BUDGETS_MAX, "{} budgets", j.budget_count());
        let first = j.ledger.first_key_value().map(|(seq, e)| (*seq, e.at));
        // Each budget's share of the ledger since its period began, in one pass.
        let mut spent: BTreeMap<(Scope, String), u64> = BTreeMap::new();
        for e in j.ledger.values() {
            let item = e.job.map(|id| id.to_string()).unwrap_or_default();
            for b in j.covering(&e.team, &e.project, &item).filter(|b| e.at >= b.period_start) {
                *spent.entry((b.scope, b.name.clone())).or_default() += e.money_micros;
            }
        }
        for (scope, by_name) in &j.budgets {
            for (name, b) in by_name {
                assert_eq!((b.scope, &b.name), (*scope, name), "budget filed under its own scope and name");
                assert_eq!(b.period.start(b.period_start), b.period_start, "{name}: period starts on a boundary");
                // Every entry of the period is still in the ledger when nothing was evicted, or
                // the oldest kept entry is older than the period.
                if first.is_none_or(|(seq, at)| seq == 1 || at < b.period_start) {
                    let spent = spent.get(&(*scope, name.clone())).copied().unwrap_or(0);
                    assert_eq!(b.spent_micros, spent, "{} budget {name}: spent against the ledger", scope.as_str());
                }
                let committed = j.committed_in(*scope, name, &self.tasks);
                assert_eq!(b.committed_micros, committed, "{} budget {name}: committed", scope.as_str());
            }
        }
    }
}

impl Jobs {
    fn check_cache(&self) {
        assert!(self.artifacts.len() <= ARTIFACTS_MAX, "{} artifacts", self.artifacts.len());
        assert!(self.cache.len() <= ARTIFACTS_MAX, "{} cache entries", self.cache.len());
        let bytes: usize = self.artifacts.values().map(|(_, d)| d.len()).sum();
        assert_eq!(self.artifact_bytes, bytes, "artifact bytes against the artifacts");
        assert!(bytes <= ARTIFACT_BYTES_TOTAL_MAX, "{bytes} artifact bytes");
        assert_eq!(self.artifact_order.len(), self.artifacts.len(), "one eviction entry per artifact");
        for (seq, digest) in &self.artifact_order {
            assert_eq!(self.artifacts.get(digest).map(|a| a.0), Some(*seq), "artifact order names {digest}");
        }
        assert_eq!(self.cache_order.len(), self.cache.len(), "one eviction entry per cache key");
        for (seq, key) in &self.cache_order {
            assert_eq!(self.cache.get(key).map(|c| c.seq), Some(*seq), "cache order names {key}");
        }
        let seqs: BTreeSet<u64> = self.artifact_order.keys().chain(self.cache_order.keys()).copied().collect();
        assert!(seqs.last().is_none_or(|s| *s <= self.seq), "an order entry past the sequence {}", self.seq);
    }
}
