//! The modelled worker of a study: the worker's own pure supervisor
//! (`qm_worker::supervisor::Supervisor`: slots, a backlog of assignments, parked tasks
//! resumed when granted) and each slot's real agent logic (`qm_worker::agent::Agent`), driven
//! from the event loop; the leases agents ask for; and the executors as drawn times, failures
//! and checkpoints.

use super::*;

impl Run<'_> {
    /// Feeds `event` to worker `w`'s supervisor (the worker's own pure logic) and performs
    /// what it asks; slot occupancy and reclaims are measured from its state.
    pub(super) fn sup_event(&mut self, w: usize, event: SupEvent) {
        let busy_before: Vec<bool> = self.workers[w].sup.slots().iter().map(|x| !x.idle).collect();
        let reclaims_before = self.workers[w].sup.reclaims();
        let actions = self.workers[w].sup.on_event(event, EPOCH_MS + self.now);
        self.m.r.reclaims += self.workers[w].sup.reclaims() - reclaims_before;
        for (s, before) in busy_before.into_iter().enumerate() {
            let slot = &self.workers[w].sup.slots()[s];
            if before == slot.idle {
                // Busy before and idle now, or the other way round.
                let role = slot.role;
                self.m.occupied(role, self.now, if before { -1.0 } else { 1.0 });
            }
        }
        let session = self.workers[w].session;
        for action in actions {
            match action {
                SupAction::Agent { slot, event } => self.inbox.push_back(Msg::Agent { w, s: slot, event }),
                SupAction::Acquire { task, resources, priority } => self.acquire(w, None, task, resources, priority),
                SupAction::RetryAfter { task, after_ms } => self.at(self.now + after_ms, Ev::ParkRetry { w, task }),
                SupAction::CancelAcquire { task } => {
                    if let Some(r) = self.pending.remove(&task) {
                        self.requests.remove(&r);
                        self.apply(Command::Cancel { session, request: r });
                    }
                }
                SupAction::Release(ids) => {
                    for id in ids {
                        self.apply(Command::Release { session, reservation: qm_coordinator::state::ReservationId(id) });
                    }
                }
                SupAction::Report { task, attempt, report } => self.report(w, None, task, attempt, report),
                // A study keeps nothing else about a waiting task, and its agents never stop
                // (no `Down` is ever sent), so nothing is lost or restarted.
                SupAction::Forget { .. } | SupAction::Lost { .. } | SupAction::Restart { .. } => {}
            }
        }
    }

    pub(super) fn drain(&mut self) {
        let mut guard = 0u64;
        while let Some(msg) = self.inbox.pop_front() {
            guard += 1;
            assert!(guard < 10_000_000, "a message loop did not settle");
            match msg {
                Msg::Agent { w, s, event } => self.agent_event(w, s, event),
                Msg::Sup { w, event } => self.sup_event(w, event),
            }
        }
    }

    pub(super) fn agent_event(&mut self, w: usize, s: usize, event: Event) {
        let granted = match &event {
            Event::Granted(leases) | Event::Resume(_, leases) => Some(leases.iter().map(|l| l.id).collect::<Vec<_>>()),
            _ => None,
        };
        if let Some(ids) = granted {
            self.workers[w].slots[s].leases.extend(ids);
        }
        let task = match &event {
            Event::Assigned(a) | Event::Resume(a, _) => Some(a.task),
            _ => self.workers[w].slots[s].agent.current().map(|(t, _)| t),
        };
        let actions = self.workers[w].slots[s].agent.on_event(event, EPOCH_MS + self.now);
        for action in actions {
            self.perform(w, s, action);
        }
        if let (true, Some(task)) = (self.workers[w].slots[s].agent.is_idle(), task) {
            self.workers[w].slots[s].leases.clear();
            self.sup_event(w, SupEvent::Idle { slot: s, task });
        }
    }

    pub(super) fn perform(&mut self, w: usize, s: usize, action: Action) {
        match action {
            Action::Acquire { task, resources, priority } => self.acquire(w, Some(s), task, resources, priority),
            Action::CancelAcquire { task } => {
                if let Some(r) = self.pending.remove(&task) {
                    self.requests.remove(&r);
                    let session = self.workers[w].session;
                    self.apply(Command::Cancel { session, request: r });
                }
            }
            Action::Start(req) => self.start(w, s, req),
            Action::Control(_) => {
                // Stop: the modelled executor checkpoints, then ends.
                let ckpt = self.sc.behaviour.checkpoint_ms;
                if let Some(x) = self.workers[w].slots[s].exec.as_mut() {
                    if !x.stopping {
                        x.stopping = true;
                        let gen = x.gen;
                        self.at(self.now + ckpt, Ev::Stopped { w, s, gen });
                    }
                }
            }
            Action::Release(ids) => {
                let session = self.workers[w].session;
                for id in ids {
                    self.apply(Command::Release { session, reservation: qm_coordinator::state::ReservationId(id) });
                }
            }
            Action::Report { task, attempt, report } => self.report(w, Some(s), task, attempt, report),
            Action::Park { a, retry } => {
                self.m.r.replans += 1;
                self.workers[w].slots[s].leases.clear();
                self.sup_event(w, SupEvent::Parked { slot: s, a, retry });
            }
        }
    }

    pub(super) fn acquire(
        &mut self,
        w: usize,
        s: Option<usize>,
        task: u64,
        resources: Vec<(String, bool, u32)>,
        priority: u32,
    ) {
        let session = self.workers[w].session;
        let items: Vec<Item> = resources
            .iter()
            .map(|(p, x, u)| Item {
                path: ResourcePath::parse(p).expect("the core's own paths parse"),
                mode: if *x { Mode::Exclusive } else { Mode::Shared },
                units: *u,
            })
            .collect();
        // The rows a queued request is charged to in the heat map: the items actually held
        // against it (all of them when it only queues behind earlier waiters).
        let blocked: Vec<bool> =
            items.iter().map(|i| self.state.held_against(std::slice::from_ref(i), priority).is_some()).collect();
        let any = blocked.iter().any(|b| *b);
        let rows: Vec<usize> =
            items.iter().zip(&blocked).filter(|(_, b)| **b || !any).map(|(i, _)| self.m.row(i.path.as_str())).collect();
        let cmd = Command::Acquire(Acquire {
            session,
            owner: task_owner(task),
            items,
            wait: Wait::Wait { timeout_ms: None },
            priority,
            lease_ms: LEASE_MS_MAX,
        });
        match self.apply(cmd) {
            Response::Granted { grants } => {
                let leases = grants.iter().map(|g| Lease { id: g.id.0, fencing_token: g.fencing_token }).collect();
                self.inbox.push_back(Msg::Sup { w, event: SupEvent::AcquireDone { task, result: Ok(leases) } });
            }
            Response::Queued { request, .. } => {
                self.pending.insert(task, request);
                self.requests.insert(request, (w, task));
                self.m.request_waits(request, rows, self.now);
                if let (Some(s), true) = (s, self.pol.replan) {
                    self.at(self.now + self.pol.replan_after_ms, Ev::Blocked { w, s, task });
                }
            }
            Response::Refused(Refusal::Deadlock { .. }) => {
                self.m.r.deadlocks += 1;
                let result = Err(AcquireError::Deadlock("refused as closing a cycle".into()));
                self.inbox.push_back(Msg::Sup { w, event: SupEvent::AcquireDone { task, result } });
            }
            Response::Refused(r) => {
                if matches!(r, Refusal::QueueFull { .. }) {
                    self.m.r.queue_full += 1;
                }
                let result = Err(AcquireError::Failed(format!("refused: {r:?}")));
                self.inbox.push_back(Msg::Sup { w, event: SupEvent::AcquireDone { task, result } });
            }
            other => panic!("unexpected answer to an acquire: {other:?}"),
        }
    }

    pub(super) fn report(&mut self, w: usize, s: Option<usize>, task: u64, attempt: u32, report: AgentReport) {
        let session = self.workers[w].session;
        let agent = match s {
            Some(s) => {
                let slot = &self.workers[w].sup.slots()[s];
                format!("{}/{}-{}", self.workers[w].node, slot.role, slot.index)
            }
            None => String::new(),
        };
        let report = match report {
            AgentReport::Progress { percent, stage, usage: u } => TaskReport::Progress { percent, stage, usage: u },
            AgentReport::Blocked { message } => TaskReport::Blocked { message },
            AgentReport::Checkpoint { seq, data, for_preemption } => {
                TaskReport::Checkpoint { seq, data, for_preemption }
            }
            AgentReport::Result { outcome, output, error, usage: u, wall_ms } => {
                use qm_coordinator::state::Outcome as O;
                match outcome {
                    O::Failed => self.m.r.attempts_failed += 1,
                    O::TimedOut => self.m.r.attempts_timed_out += 1,
                    O::Preempted => self.m.r.attempts_preempted += 1,
                    _ => {}
                }
                if outcome == O::Succeeded && output.starts_with(b"FAIL") {
                    self.m.r.gate_failures += 1;
                }
                TaskReport::Finished { outcome, output, error, usage: u, wall_ms, agent, spec: String::new() }
            }
        };
        self.apply(Command::ReportTask { session, task: TaskId(task), attempt, report });
    }

    // ------------------------------------------------------------------ the modelled executor

    pub(super) fn start(&mut self, w: usize, s: usize, req: ExecRequest) {
        let now = self.now;
        let payload: serde_json::Value = serde_json::from_slice(&req.payload).unwrap_or_default();
        let wf = payload["w"].as_str().unwrap_or("").to_string();
        let pass = payload["p"].as_str().unwrap_or("").to_string();
        let job =
            payload["j"].as_str().and_then(|j| j.strip_prefix('j')).and_then(|j| j.parse::<u64>().ok()).unwrap_or(0);
        let review = payload["review"].as_bool().unwrap_or(false);
        let role = self.workers[w].sup.slots()[s].role;

        // Waits: queued → assigned → resources granted (now).
        if let Some(info) = self.tasks.get(&req.task) {
            let wait = now.saturating_sub(info.queued_at);
            let assigned = info.assigned_at.unwrap_or(now).max(info.queued_at);
            let c = info.class;
            self.m.waits[c].push(wait);
            self.m.dispatch_sum[c] += assigned - info.queued_at;
            self.m.resources_sum[c] += now.saturating_sub(assigned);
            if wait > self.m.r.longest_wait.ms {
                self.m.r.longest_wait = LongestWait {
                    ms: wait,
                    class: qm_shared::workflow_file::CLASSES[c].0.to_string(),
                    pass: format!("{wf}/{pass}{}", if review { "#gate" } else { "" }),
                    job: format!("j{job}"),
                    unfinished: false,
                };
            }
        }
        self.m.r.attempts_started += 1;
        if self.workers[w].sup.parked() > 0 {
            self.m.r.replan_starts += 1;
        }

        // The attempt's plan: keyed draws, so every variant sees the same work.
        let pass_key = hash_str(&format!("{wf}/{pass}/{review}"));
        let resumed = req.resume.as_deref().and_then(parse_checkpoint);
        let (done_before, total) = match resumed {
            Some(x) => x,
            None => {
                let k = self.fresh.entry((job, pass_key)).or_insert(0);
                *k += 1;
                let mut rng = Rng::keyed(self.seed, &[4, job, pass_key, *k]);
                let dist = if review { self.sc.durations.review } else { self.sc.durations.of(&wf, &pass, role) };
                (0, dist.sample(&mut rng))
            }
        };
        let fresh = self.fresh.get(&(job, pass_key)).copied().unwrap_or(0);
        let mut rng = Rng::keyed(self.seed, &[5, job, pass_key, fresh, u64::from(req.attempt)]);
        let b = &self.sc.behaviour;
        let x = rng.unit();
        let plan = if review {
            Plan::Succeed
        } else if x < b.fail {
            Plan::Fail
        } else if x < b.fail + b.hang {
            Plan::Hang
        } else {
            Plan::Succeed
        };
        let remaining = total.saturating_sub(done_before).max(1);
        let timeout = if req.timeout_ms > 0 { req.timeout_ms } else { b.hang_timeout_ms };
        let ends = match plan {
            Plan::Succeed => now + remaining,
            Plan::Fail => now + 1 + (remaining as f64 * rng.unit()) as u64,
            Plan::Hang => now + timeout,
        };
        let ends = if req.timeout_ms > 0 { ends.min(now + req.timeout_ms) } else { ends };
        let output = if review {
            if rng.chance(b.gate_fail) {
                b"FAIL: the modelled review found a gap".to_vec()
            } else {
                b"PASS".to_vec()
            }
        } else {
            format!("{wf}/{pass} of j{job}, run {fresh}").into_bytes()
        };
        self.gen += 1;
        let gen = self.gen;
        self.workers[w].slots[s].exec = Some(Exec {
            task: req.task,
            gen,
            started: now,
            done_before,
            total,
            review,
            output,
            ends,
            plan,
            stopping: false,
        });
        self.m.running(role, now, 1.0);
        self.at(ends, Ev::ExecDone { w, s, gen });
        if ends > now + EXTEND_EVERY_MS {
            self.at(now + EXTEND_EVERY_MS, Ev::Extend { w, s, gen });
        }
    }

    pub(super) fn exec_done(&mut self, w: usize, s: usize, gen: u64) {
        let now = self.now;
        let slot = &mut self.workers[w].slots[s];
        if !slot.exec.as_ref().is_some_and(|x| x.gen == gen && !x.stopping) {
            return;
        }
        let x = slot.exec.take().expect("present");
        let role = self.workers[w].sup.slots()[s].role;
        self.m.running(role, now, -1.0);
        let worked = now.saturating_sub(x.started);
        let finished = x.done_before + worked >= x.total;
        let outcome = match x.plan {
            Plan::Succeed if finished => ExecOutcome::Succeeded,
            Plan::Succeed | Plan::Hang => ExecOutcome::TimedOut,
            Plan::Fail => ExecOutcome::Failed,
        };
        let _ = (x.task, x.ends);
        if outcome == ExecOutcome::Succeeded && !x.review {
            self.m.r.passes_succeeded += 1;
        }
        let error = match outcome {
            ExecOutcome::Failed => "the modelled attempt failed".to_string(),
            ExecOutcome::TimedOut => "the attempt ran past its timeout".to_string(),
            _ => String::new(),
        };
        let output = if outcome == ExecOutcome::Succeeded { x.output } else { Vec::new() };
        let result = ExecResult { outcome, output, error, usage: self.usage(worked) };
        self.agent_event(w, s, Event::ExecDone(result));
    }

    pub(super) fn usage(&self, worked_ms: u64) -> ExecUsage {
        let min = worked_ms as f64 / 60_000.0;
        ExecUsage {
            input_tokens: (self.sc.behaviour.tokens_in_per_min as f64 * min) as u64,
            output_tokens: (self.sc.behaviour.tokens_out_per_min as f64 * min) as u64,
            cached_tokens: 0,
            estimated: false,
            reported_micros: None,
        }
    }
}
