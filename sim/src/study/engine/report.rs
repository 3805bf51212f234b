//! The end of a study: the report (throughput, waits, utilisation, contention, cost, the
//! state digest) and the metrics kept on the way.

use super::*;

impl Run<'_> {
    pub(super) fn finish(mut self) -> Report {
        let end = self.sc.duration_ms;
        self.read_ledger();
        let bucket_ms = self.m.bucket_ms;
        // Passes still waiting at the end count for starvation (in task order: ties go to the first).
        for (task, info) in &self.tasks {
            let wait = end.saturating_sub(info.queued_at);
            if info.assigned_at.is_none() && wait > self.m.r.longest_wait.ms {
                let pass = self.state.tasks().get(TaskId(*task)).map_or(String::new(), |t| {
                    let v: serde_json::Value = serde_json::from_slice(&t.spec.payload).unwrap_or_default();
                    let review = if v["review"].as_bool().unwrap_or(false) { "#gate" } else { "" };
                    format!("{}/{}{review}", v["w"].as_str().unwrap_or(""), v["p"].as_str().unwrap_or(""))
                });
                self.m.r.longest_wait = LongestWait {
                    ms: wait,
                    class: qm_shared::workflow_file::CLASSES[info.class].0.to_string(),
                    pass,
                    job: format!("j{}", info.job),
                    unfinished: true,
                };
            }
        }
        for g in self.m.role_running.values_mut().chain(self.m.role_occupied.values_mut()) {
            g.advance(end, bucket_ms);
        }
        for g in self.m.busy.iter_mut().chain(self.m.waiters.iter_mut()) {
            g.advance(end, bucket_ms);
        }
        let mut r = std::mem::take(&mut self.m.r);
        let hours = end as f64 / 3.6e6;
        r.items_completed = self.m.completed.iter().sum();
        r.items_failed = self.m.failed.iter().sum();
        r.items_in_flight = self.open_jobs.len() as u64;
        r.items_per_hour = r.items_completed as f64 / hours;
        r.passes_per_hour = r.passes_succeeded as f64 / hours;
        r.cost_micros = self.state.jobs().total_micros();

        // Wait CDF x axis: log-spaced from 1 s to the longest wait.
        let longest = self.m.waits.iter().flat_map(|w| w.iter()).copied().max().unwrap_or(1_000).max(1_000);
        let points = 60;
        let cdf_ms: Vec<u64> = (0..=points)
            .map(|k| (1_000.0 * (longest as f64 / 1_000.0).powf(k as f64 / points as f64)) as u64)
            .collect();
        for (c, (class, prio)) in qm_shared::workflow_file::CLASSES.iter().enumerate() {
            if self.m.submitted[c] == 0 {
                continue;
            }
            let mut w = std::mem::take(&mut self.m.waits[c]);
            w.sort_unstable();
            let mut leads = std::mem::take(&mut self.m.leads[c]);
            leads.sort_unstable();
            let n = w.len().max(1) as u64;
            let cdf = cdf_ms.iter().map(|x| w.partition_point(|v| v <= x) as f64 / w.len().max(1) as f64).collect();
            r.classes.push(WaitStats {
                class: class.to_string(),
                priority: *prio,
                submitted: self.m.submitted[c],
                completed: self.m.completed[c],
                failed: self.m.failed[c],
                starts: w.len() as u64,
                p50_ms: percentile(&w, 0.50),
                p90_ms: percentile(&w, 0.90),
                p99_ms: percentile(&w, 0.99),
                max_ms: w.last().copied().unwrap_or(0),
                mean_dispatch_ms: self.m.dispatch_sum[c] / n,
                mean_resources_ms: self.m.resources_sum[c] / n,
                lead_p50_ms: percentile(&leads, 0.50),
                lead_p90_ms: percentile(&leads, 0.90),
                cdf,
            });
        }
        r.cdf_ms = cdf_ms;
        let total_slots: u64 = self.m.role_slots.values().sum();
        let mut series = vec![0.0; self.sc.buckets as usize];
        for (role, slots) in &self.m.role_slots {
            let run = &self.m.role_running[role];
            let occ = &self.m.role_occupied[role];
            for (b, v) in run.means(bucket_ms).iter().enumerate() {
                series[b] += v / total_slots.max(1) as f64;
            }
            r.roles.push(RoleUse {
                role: role.as_str().to_string(),
                slots: *slots,
                running: run.mean(bucket_ms) / *slots as f64,
                occupied: occ.mean(bucket_ms) / *slots as f64,
            });
        }
        r.agent_series = series;
        for (i, (path, capacity, policy)) in self.m.rows.iter().enumerate() {
            let cap = f64::from(capacity.unwrap_or(1).max(1));
            let busy: Vec<f64> = self.m.busy[i].means(bucket_ms).iter().map(|v| v / cap).collect();
            r.resources.push(ResourceUse {
                path: path.clone(),
                capacity: *capacity,
                policy: policy.clone(),
                busy: self.m.busy[i].mean(bucket_ms) / cap,
                mean_waiters: self.m.waiters[i].mean(bucket_ms),
                peak_waiters: self.m.waiters[i].peak() as u64,
                grants: self.m.grants[i],
                busy_series: busy,
                waiters_series: self.m.waiters[i].means(bucket_ms),
            });
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.state.snapshot());
        r.state_digest = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        r
    }
}

impl Metrics {
    /// The report row of a resource path: the declared resource it lies under.
    pub(super) fn row(&mut self, path: &str) -> usize {
        if let Some(r) = self.row_of.get(path) {
            return *r;
        }
        let under = |p: &str, root: &str| p == root || p.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'));
        let row = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, (root, _, _))| under(path, root))
            .max_by_key(|(_, (root, _, _))| root.len())
            .map(|(i, _)| i);
        let row = match row {
            Some(r) => r,
            None => {
                let root = path.split('/').next().unwrap_or(path).to_string();
                match self.rows.iter().position(|(p, _, _)| *p == root) {
                    Some(i) => i,
                    None => {
                        let n = self.busy.first().map_or(48, |g| g.means(1).len());
                        self.rows.push((root, None, "none".into()));
                        self.busy.push(Gauge::new(n));
                        self.waiters.push(Gauge::new(n));
                        self.held_units.push(0);
                        self.grants.push(0);
                        self.rows.len() - 1
                    }
                }
            }
        };
        self.row_of.insert(path.to_string(), row);
        row
    }

    pub(super) fn hold(&mut self, row: usize, delta: i64, now: u64) {
        let before = self.held_units[row];
        let after = (before as i64 + delta).max(0) as u64;
        self.held_units[row] = after;
        let counted = self.rows[row].1.is_some();
        let (b, a) =
            if counted { (before as f64, after as f64) } else { ((before > 0) as u8 as f64, (after > 0) as u8 as f64) };
        if a != b {
            self.busy[row].add(now, self.bucket_ms, a - b);
        }
    }

    pub(super) fn unhold(&mut self, lease: u64, now: u64) {
        if let Some((row, units)) = self.lease_row.remove(&lease) {
            self.hold(row, -(units as i64), now);
        }
    }

    pub(super) fn request_waits(&mut self, request: RequestId, rows: Vec<usize>, now: u64) {
        for r in &rows {
            self.waiters[*r].add(now, self.bucket_ms, 1.0);
        }
        self.request_rows.insert(request, rows);
    }

    pub(super) fn request_done(&mut self, request: RequestId, now: u64) {
        if let Some(rows) = self.request_rows.remove(&request) {
            for r in rows {
                self.waiters[r].add(now, self.bucket_ms, -1.0);
            }
        }
    }

    pub(super) fn running(&mut self, role: Role, now: u64, d: f64) {
        if let Some(g) = self.role_running.get_mut(&role) {
            g.add(now, self.bucket_ms, d);
        }
    }

    pub(super) fn occupied(&mut self, role: Role, now: u64, d: f64) {
        if let Some(g) = self.role_occupied.get_mut(&role) {
            g.add(now, self.bucket_ms, d);
        }
    }
}
