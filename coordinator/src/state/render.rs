//! The lock table and the wait-for graph as text, for scenario tests and `qm graph`.
//!
//! ```text
//! sessions:
//!   s1 ttl=10000 expires_at=10000 owners=[a]
//! lock table:
//!   pg:staging                        held a:IX b:IS
//!   pg:staging/table:orders           held a:X  grants r3(a X tok=3 exp=60000)
//!                                     queue q7(b S eff=500)
//! wait-for:
//!   b -> a
//! ```

use std::fmt::Write;

use super::lock_table::join_counts;
use super::State;

impl State {
    /// A stable, human-readable dump of sessions, the lock table and the wait-for graph.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_sessions(&mut out);
        out.push_str(&self.render_lock_table());
        out.push_str(&self.render_wait_for());
        out
    }

    fn render_sessions(&self, out: &mut String) {
        out.push_str("sessions:\n");
        for s in self.sessions.values() {
            let owners: Vec<String> = s
                .owners
                .values()
                .filter(|o| {
                    let o = &self.owners[o];
                    !o.grants.is_empty() || o.pending.is_some()
                })
                .map(|o| {
                    let o = &self.owners[o];
                    match o.inherited {
                        0 => o.name.to_string(),
                        p => format!("{}(inherits {p})", o.name),
                    }
                })
                .collect();
            writeln!(out, "  {} ttl={} expires_at={} owners=[{}]", s.id, s.ttl_ms, s.expires_at, owners.join(" "))
                .expect("write to String");
        }
    }

    pub fn render_lock_table(&self) -> String {
        let mut out = String::from("lock table:\n");
        let width = self
            .table
            .iter()
            .filter(|(_, n)| !n.held.is_empty() || !n.queue.is_empty())
            .map(|(_, n)| n.path.as_str().len())
            .max()
            .unwrap_or(0)
            .min(60);
        // Vacant nodes (nothing held or queued, waiting to be collected) are not shown.
        for (_, node) in self.table.iter().filter(|(_, n)| !n.held.is_empty() || !n.queue.is_empty()) {
            let key = node.path.as_str();
            let held: Vec<String> = node
                .held
                .iter()
                .map(|(o, counts)| {
                    format!("{}:{}", self.owners[o].name, join_counts(counts).expect("held counts are non-zero"))
                })
                .collect();
            write!(out, "  {key:width$}").expect("write to String");
            if !held.is_empty() {
                write!(out, "  held {}", held.join(" ")).expect("write to String");
            }
            let grants: Vec<String> = node
                .grants
                .iter()
                .map(|g| {
                    let g = &self.grants[g];
                    let mut s = format!(
                        "{}({} {} tok={} exp={}",
                        g.id,
                        self.owners[&g.owner].name,
                        g.mode.lock_mode(),
                        g.token,
                        g.expires_at
                    );
                    if self.capacity(key).is_some() {
                        write!(s, " units={}", g.units).expect("write to String");
                    }
                    if let Some(d) = g.preempt_deadline {
                        write!(s, " preempt-by={d}").expect("write to String");
                    }
                    s.push(')');
                    s
                })
                .collect();
            if !grants.is_empty() {
                write!(out, "  grants {}", grants.join(" ")).expect("write to String");
            }
            if let Some(rc) = self.resources.get(key) {
                write!(out, "  [policy={}", rc.policy.as_str()).expect("write to String");
                if let Some(c) = rc.capacity {
                    write!(out, " capacity={c} used={}", node.units).expect("write to String");
                }
                out.push(']');
            }
            out.push('\n');
            let queue: Vec<String> = node
                .queue
                .values()
                .map(|e| {
                    let r = &self.requests[&e.request];
                    let tag = if e.target { "" } else { "~" };
                    format!("{}({}{} {} eff={})", r.id, tag, self.owners[&e.owner].name, e.mode, r.effective)
                })
                .collect();
            if !queue.is_empty() {
                writeln!(out, "  {:width$}  queue {}", "", queue.join(" ")).expect("write to String");
            }
        }
        for (key, rc) in &self.resources {
            if self.table.get(key).is_none_or(|n| n.held.is_empty() && n.queue.is_empty()) {
                write!(out, "  {key:width$}  [policy={}", rc.policy.as_str()).expect("write to String");
                if let Some(c) = rc.capacity {
                    write!(out, " capacity={c} used=0").expect("write to String");
                }
                out.push_str("]\n");
            }
        }
        out
    }

    pub fn render_wait_for(&self) -> String {
        let mut out = String::from("wait-for:\n");
        for (from, targets) in self.wait_for.edges() {
            let names: Vec<&str> = targets.iter().map(|t| &*self.owners[t].name).collect();
            writeln!(out, "  {} -> {}", self.owners[from].name, names.join(", ")).expect("write to String");
        }
        out
    }
}
