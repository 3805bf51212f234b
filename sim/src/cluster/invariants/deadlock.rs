//! Deadlocks are broken: no replica's wait-for graph ever holds a cycle after an apply (the
//! apply that closes a cycle must abort a victim in the same apply).

use std::collections::{BTreeMap, BTreeSet};

use super::{Invariant, Obs};

#[derive(Debug)]
pub struct Deadlock;

/// A cycle in `edges`, as the owners on it.
pub fn find_cycle(edges: &[(String, String)]) -> Option<Vec<String>> {
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (a, b) in edges {
        out.entry(a.as_str()).or_default().insert(b.as_str());
    }
    // Colours: 0 unvisited, 1 on the stack, 2 done. Iterative DFS, bounded by the edge count.
    let mut colour: BTreeMap<&str, u8> = BTreeMap::new();
    for &start in out.keys() {
        if colour.get(start).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut stack: Vec<(&str, Vec<&str>)> = vec![(start, out[start].iter().copied().collect())];
        colour.insert(start, 1);
        while let Some((node, next)) = stack.last_mut() {
            match next.pop() {
                Some(n) => match colour.get(n).copied().unwrap_or(0) {
                    0 => {
                        colour.insert(n, 1);
                        let succ = out.get(n).map(|s| s.iter().copied().collect()).unwrap_or_default();
                        stack.push((n, succ));
                    }
                    1 => {
                        let mut cycle: Vec<String> = stack.iter().map(|(o, _)| o.to_string()).collect();
                        let at = cycle.iter().position(|o| o == n).unwrap_or(0);
                        cycle.drain(..at);
                        return Some(cycle);
                    }
                    _ => {}
                },
                None => {
                    colour.insert(node, 2);
                    stack.pop();
                }
            }
        }
    }
    None
}

impl Invariant for Deadlock {
    fn name(&self) -> &'static str {
        "deadlocks-broken"
    }

    fn on_step(&mut self, obs: &Obs<'_>) -> Result<(), String> {
        for r in obs.replicas {
            let edges: Vec<(String, String)> = r
                .edges
                .iter()
                .filter(|(a, b)| a != b)
                .map(|(a, b)| (format!("{}@{}", a.name, a.session.0), format!("{}@{}", b.name, b.session.0)))
                .collect();
            if let Some(cycle) = find_cycle(&edges) {
                return Err(format!("n{} at index {} holds a wait-for cycle: {}", r.id, r.applied, cycle.join(" -> ")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::find_cycle;

    #[test]
    fn finds_a_cycle_and_only_a_cycle() {
        let e = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(find_cycle(&[e("a", "b"), e("b", "c")]), None);
        assert_eq!(find_cycle(&[e("a", "b"), e("b", "c"), e("c", "b")]), Some(vec!["b".into(), "c".into()]));
    }
}
