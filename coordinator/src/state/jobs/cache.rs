//! The artifact cache: a pass whose inputs are unchanged reuses the previous output instead
//! of running again.

use qm_shared::limits::{ARTIFACTS_MAX, ARTIFACT_BYTES_TOTAL_MAX};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::*;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(in crate::state) struct CacheEntry {
    pub(in crate::state) digest: String,
    pub(in crate::state) cost_micros: u64,
    pub(in crate::state) seq: u64,
}

impl Jobs {
    pub fn artifact(&self, digest: &str) -> Option<&[u8]> {
        self.artifacts.get(digest).map(|(_, d)| d.as_slice())
    }

    pub(in crate::state) fn store_artifact(&mut self, digest: &str, data: Vec<u8>) {
        if self.artifacts.contains_key(digest) {
            return;
        }
        self.seq += 1;
        self.artifact_bytes += data.len();
        self.artifacts.insert(digest.to_string(), (self.seq, data));
        self.artifact_order.insert(self.seq, digest.to_string());
        while self.artifacts.len() > ARTIFACTS_MAX || self.artifact_bytes > ARTIFACT_BYTES_TOTAL_MAX {
            let Some((_, old)) = self.artifact_order.pop_first() else { break };
            if let Some((_, d)) = self.artifacts.remove(&old) {
                self.artifact_bytes -= d.len();
            }
        }
    }

    /// The artifacts pass `i` of `job` may see in its payload: `artifact.<pass>` of every
    /// pass it comes after (transitively) that has one; for its review, `output`: its own;
    /// for the pass itself, `feedback`: the latest failed gate of it or of a pass after it
    /// (what a retry or a send-back is for), empty when there is none. Nothing is rendered
    /// for a `template` that names none of them (most do not).
    pub(in crate::state) fn fill_values(
        &self,
        job: &Job,
        i: usize,
        review: bool,
        template: &[u8],
    ) -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        let names = |p: &[u8]| template.windows(p.len()).any(|w| w == p);
        if !(names(b"{{artifact.") || names(b"{{output}}") || names(b"{{feedback}}")) {
            return values;
        }
        let w = &job.spec.workflow;
        let text_of = |k: usize| {
            let digest = job.passes.get(k)?.artifact.as_ref()?;
            Some(super::gates::artifact_text(self.artifact(digest)?))
        };
        let mut todo: Vec<usize> = vec![i];
        let mut seen = BTreeSet::new();
        while let Some(k) = todo.pop() {
            for a in &w.passes[k].after {
                if let Some((j, p)) = w.pass(a).filter(|(j, _)| seen.insert(*j)) {
                    if let Some(t) = text_of(j) {
                        values.insert(format!("artifact.{}", p.name), t);
                    }
                    todo.push(j);
                }
            }
        }
        if review {
            if let Some(t) = text_of(i) {
                values.insert("output".to_string(), t);
            }
        } else {
            let failed = job.passes[i..]
                .iter()
                .flat_map(|p| p.gates.iter().filter(|g| !g.passed).map(move |g| (g.at, g.round, p.name.as_str(), g)))
                .max_by_key(|(at, round, _, _)| (*at, *round));
            let feedback = failed.map_or_else(String::new, |(_, _, pass, g)| {
                format!("The last review failed: {pass}'s gate, by {}: {}", g.reviewer, g.note)
            });
            values.insert("feedback".to_string(), feedback);
        }
        values
    }

    pub(in crate::state) fn remember(&mut self, key: String, digest: String, cost_micros: u64) {
        self.seq += 1;
        if let Some(old) = self.cache.insert(key.clone(), CacheEntry { digest, cost_micros, seq: self.seq }) {
            self.cache_order.remove(&old.seq);
        }
        self.cache_order.insert(self.seq, key);
        while self.cache.len() > ARTIFACTS_MAX {
            let Some((_, old)) = self.cache_order.pop_first() else { break };
            self.cache.remove(&old);
        }
    }
}

/// `payload` with `cached` set to `artifact`, if the payload is an agent's (a JSON object
/// with `executor = "agent"`), the artifact records the files it read (`reads` and `tree`),
/// and the two fit in `max` bytes; else `None`.
pub(in crate::state) fn with_cached(payload: &[u8], artifact: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut p: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if p.get("executor").and_then(|e| e.as_str()) != Some("agent") || p.get("review").is_some_and(|r| r == true) {
        return None;
    }
    let a: serde_json::Value = serde_json::from_slice(artifact).ok()?;
    if !(a.get("tree").is_some_and(|t| t.is_string()) && a.get("reads").is_some_and(|r| r.is_array())) {
        return None;
    }
    p.as_object_mut()?.insert("cached".into(), a);
    let bytes = serde_json::to_vec(&p).ok()?;
    (bytes.len() <= max).then_some(bytes)
}

/// What an artifact says of itself: (it records the files it read, it was replayed from
/// the cache).
pub(in crate::state) fn replay_facts(artifact: &[u8]) -> (bool, bool) {
    let Ok(a) = serde_json::from_slice::<serde_json::Value>(artifact) else { return (false, false) };
    (a.get("tree").is_some_and(|t| t.is_string()), a.get("replayed").is_some_and(|r| r == true))
}

/// Hex SHA-256.
pub(in crate::state) fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    pub(in crate::state) const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The cache key of pass `i`: the workflow and pass, its role, the repo commit, the digests
/// of the inputs it names (work-item inputs or upstream outputs) and of the passes it
/// comes after. A hit reuses the artifact without running anything.
pub(in crate::state) fn cache_key(job: &Job, i: usize) -> String {
    key(job, i, Some(&job.spec.commit))
}

/// The key of pass `i` without the commit: results kept under it are offered to the worker
/// (`with_cached`), which replays one only if the files it read are unchanged at the new
/// commit.
pub(in crate::state) fn tree_key(job: &Job, i: usize) -> String {
    format!("tree:{}", key(job, i, None))
}

fn key(job: &Job, i: usize, commit: Option<&str>) -> String {
    let w = &job.spec.workflow;
    let pass = &w.passes[i];
    let mut parts: Vec<Vec<u8>> = vec![
        if commit.is_some() { b"qm-cache-v1".to_vec() } else { b"qm-cache-tree-v1".to_vec() },
        w.name.clone().into_bytes(),
        pass.name.clone().into_bytes(),
        pass.role.as_str().as_bytes().to_vec(),
    ];
    if let Some(c) = commit {
        parts.push(c.as_bytes().to_vec());
    }
    let mut inputs: Vec<&String> = pass.inputs.iter().collect();
    inputs.sort();
    for name in inputs {
        let value = match job.spec.inputs.get(name) {
            Some(v) => sha256_hex(&[v.as_bytes()]),
            None => w
                .passes
                .iter()
                .zip(&job.passes)
                .find(|(p, _)| p.outputs.contains(name))
                .and_then(|(_, s)| s.artifact.clone())
                .unwrap_or_else(|| "-".into()),
        };
        parts.push(format!("{name}={value}").into_bytes());
    }
    for a in &pass.after {
        let digest = w.pass(a).and_then(|(k, _)| job.passes[k].artifact.clone()).unwrap_or_default();
        parts.push(format!("after {a}={digest}").into_bytes());
    }
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
    sha256_hex(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_agent_pass_is_offered_a_result_that_records_its_reads_and_only_within_the_bound() {
        let agent = br#"{"executor":"agent","prompt":"p"}"#;
        let art = br#"{"summary":"s","reads":["calc.sh"],"tree":"ab12"}"#;
        let with: serde_json::Value = serde_json::from_slice(&with_cached(agent, art, 1_024).unwrap()).unwrap();
        assert_eq!(with["cached"]["reads"], serde_json::json!(["calc.sh"]));
        assert_eq!(with["prompt"], "p");
        assert_eq!(with_cached(br#"{"executor":"command","cmd":"true"}"#, art, 1_024), None, "not an agent");
        assert_eq!(with_cached(br#"{"executor":"agent","review":true}"#, art, 1_024), None, "a review");
        assert_eq!(with_cached(agent, br#"{"summary":"s"}"#, 1_024), None, "no reads recorded");
        assert_eq!(with_cached(agent, b"not json", 1_024), None);
        assert_eq!(with_cached(agent, art, 40), None, "over the payload bound");
        assert_eq!(replay_facts(art), (true, false));
        assert_eq!(replay_facts(br#"{"replayed":true,"tree":"x"}"#), (true, true));
        assert_eq!(replay_facts(b"ok\n"), (false, false));
    }
}
