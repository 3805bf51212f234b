//! `check_jobs`: the invariants of work items, budgets, the ledger and the artifact cache,
//! checked after every apply in debug builds and after every restore, beside the lock
//! table's. Each returns what broke as an `Err` (see `state::invariants`): after an apply
//! that is a bug and panics; in a restored snapshot it refuses the snapshot.
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

use crate::state::invariants::{ensure, ensure_eq, entry, Checked};
use crate::state::{Scope, State};

use super::*;

impl State {
    /// Checks the invariants of work items, budgets, the ledger and the cache.
    pub(in crate::state) fn check_jobs(&self) -> Checked {
        self.check_job_records()?;
        self.check_passes()?;
        self.check_ledger()?;
        self.check_budgets()?;
        self.jobs.check_cache()
    }

    fn check_job_records(&self) -> Checked {
        let j = &self.jobs;
        ensure!(j.ended.len() <= JOBS_ENDED_RETAINED_MAX, "{} ended items retained", j.ended.len());
        for (at, id) in &j.ended {
            let job = entry(&j.jobs, id, "ended work item")?;
            ensure_eq!(job.ended_at, Some(*at), "{id} is indexed as ended at {at}");
            ensure!(job.status != JobStatus::Running, "{id} is running and indexed as ended");
        }
        for (id, job) in &j.jobs {
            ensure_eq!(job.id, *id);
            ensure!(id.0 <= j.next_job, "{id} is past the last id {}", j.next_job);
            ensure_eq!(job.passes.len(), job.spec.workflow.passes.len(), "{id} has a state per pass");
            match job.ended_at {
                Some(at) => ensure!(j.ended.contains(&(at, *id)), "ended {id} missing from the ended index"),
                None => ensure_eq!(job.status, JobStatus::Running, "{id} ended without an end time"),
            }
        }
        for (task, (id, i, kind)) in &j.by_task {
            let job = entry(&j.jobs, id, "work item")?;
            let pass = job.passes.get(*i).ok_or_else(|| format!("{task} links to pass {i} of {id}"))?;
            let named = match kind {
                Kind::Work => pass.task,
                Kind::Review => pass.review,
            };
            ensure!(self.tasks.get(*task).is_some(), "{task} of {id} is linked but forgotten");
            // A pass names its latest task; earlier runs' tasks stay linked for their reports.
            if named == Some(*task) {
                continue;
            }
            ensure!(named.is_none_or(|n| n > *task), "{id} pass {} names {named:?} before {task}", pass.name);
        }
        Ok(())
    }

    fn check_passes(&self) -> Checked {
        for (id, job) in &self.jobs.jobs {
            for (i, p) in job.passes.iter().enumerate() {
                let live = |t: Option<TaskId>, kind: &str| -> Checked {
                    let t = t.ok_or_else(|| format!("{id} pass {} is {:?} with no {kind} task", p.name, p.status))?;
                    let task = self.tasks.get(t).ok_or_else(|| format!("{id} pass {}: {t} unknown", p.name))?;
                    ensure!(!task.status.ended(), "{id} pass {} is {:?} and its {t} ended", p.name, p.status);
                    ensure_eq!(self.jobs.by_task.get(&t).map(|l| (l.0, l.1)), Some((*id, i)), "{t} links back");
                    Ok(())
                };
                match p.status {
                    PassStatus::Queued | PassStatus::Running => live(p.task, "work")?,
                    PassStatus::Reviewing => live(p.review, "review")?,
                    _ => {}
                }
                if p.status.active() || p.status == PassStatus::AwaitingHuman {
                    ensure_eq!(job.status, JobStatus::Running, "{id} ended with pass {} {:?}", p.name, p.status);
                    let spec = job.spec.workflow.passes.get(i).ok_or_else(|| format!("{id} pass {i} has no spec"))?;
                    for after in &spec.after {
                        let done = job.passes.iter().any(|q| &q.name == after && q.status.done());
                        ensure!(done, "{id} pass {} is {:?} before {after} passed its gate", p.name, p.status);
                    }
                }
            }
        }
        Ok(())
    }

    fn check_ledger(&self) -> Checked {
        let j = &self.jobs;
        ensure!(j.ledger.len() <= LEDGER_ENTRIES_MAX, "{} ledger entries", j.ledger.len());
        let (mut money, mut saved) = (0u64, 0u64);
        for (seq, e) in &j.ledger {
            ensure_eq!(e.seq, *seq);
            ensure!(*seq <= j.ledger_seq, "entry {seq} past the ledger's sequence {}", j.ledger_seq);
            money = money.saturating_add(e.money_micros);
            saved = saved.saturating_add(e.saved_micros);
        }
        let complete = j.ledger.first_key_value().is_none_or(|(seq, _)| *seq == 1);
        if complete && j.ledger.len() as u64 == j.ledger_seq {
            ensure_eq!(j.total_micros, money, "ledger total against its entries");
            ensure_eq!(j.saved_micros, saved, "ledger savings against its entries");
        } else {
            ensure!(j.total_micros >= money, "ledger total below its retained entries");
            ensure!(j.saved_micros >= saved, "ledger savings below its retained entries");
        }
        Ok(())
    }

    fn check_budgets(&self) -> Checked {
        let j = &self.jobs;
        ensure!(j.budget_count() <= BUDGETS_MAX, "{} budgets", j.budget_count());
        let first = j.ledger.first_key_value().map(|(seq, e)| (*seq, e.at));
        // Each budget's share of the ledger since its period began, in one pass.
        let mut spent: BTreeMap<(Scope, String), u64> = BTreeMap::new();
        for e in j.ledger.values() {
            let item = e.job.map(|id| id.to_string()).unwrap_or_default();
            for b in j.covering(&e.team, &e.project, &item).filter(|b| e.at >= b.period_start) {
                let sum = spent.entry((b.scope, b.name.clone())).or_default();
                *sum = sum.saturating_add(e.money_micros);
            }
        }
        for (scope, by_name) in &j.budgets {
            for (name, b) in by_name {
                ensure_eq!((b.scope, &b.name), (*scope, name), "budget filed under its own scope and name");
                ensure_eq!(b.period.start(b.period_start), b.period_start, "{name}: period starts on a boundary");
                // Every entry of the period is still in the ledger when nothing was evicted, or
                // the oldest kept entry is older than the period.
                if first.is_none_or(|(seq, at)| seq == 1 || at < b.period_start) {
                    let spent = spent.get(&(*scope, name.clone())).copied().unwrap_or(0);
                    ensure_eq!(b.spent_micros, spent, "{} budget {name}: spent against the ledger", scope.as_str());
                }
                let committed = j.committed_in(*scope, name, &self.tasks);
                ensure_eq!(b.committed_micros, committed, "{} budget {name}: committed", scope.as_str());
            }
        }
        Ok(())
    }
}

impl Jobs {
    fn check_cache(&self) -> Checked {
        ensure!(self.artifacts.len() <= ARTIFACTS_MAX, "{} artifacts", self.artifacts.len());
        ensure!(self.cache.len() <= ARTIFACTS_MAX, "{} cache entries", self.cache.len());
        let bytes: usize = self.artifacts.values().map(|(_, d)| d.len()).sum();
        ensure_eq!(self.artifact_bytes, bytes, "artifact bytes against the artifacts");
        ensure!(bytes <= ARTIFACT_BYTES_TOTAL_MAX, "{bytes} artifact bytes");
        ensure_eq!(self.artifact_order.len(), self.artifacts.len(), "one eviction entry per artifact");
        for (seq, digest) in &self.artifact_order {
            ensure_eq!(self.artifacts.get(digest).map(|a| a.0), Some(*seq), "artifact order names {digest}");
        }
        ensure_eq!(self.cache_order.len(), self.cache.len(), "one eviction entry per cache key");
        for (seq, key) in &self.cache_order {
            ensure_eq!(self.cache.get(key).map(|c| c.seq), Some(*seq), "cache order names {key}");
        }
        let seqs: BTreeSet<u64> = self.artifact_order.keys().chain(self.cache_order.keys()).copied().collect();
        ensure!(seqs.last().is_none_or(|s| *s <= self.seq), "an order entry past the sequence {}", self.seq);
        Ok(())
    }
}
