//! Per-principal write rates at the edge: a token bucket per principal on each node, for every
//! call that needs a role beyond reading. Off unless `--write-rate-per-principal` is given
//! (as in Consul and Nomad); a node limits what reaches it, so a principal spreading its
//! calls over N nodes gets up to N times the rate.
//!
//! ```text
//!   call ─▶ authenticate ─▶ needs a role? ─▶ bucket(principal): a token? ─▶ serve
//!                                                  └ no: RESOURCE_EXHAUSTED, rule write-rate,
//!                                                        with when to retry; nothing applied
//! ```
//!
//! Time comes from the node's clock seam; the arithmetic is in integers (millionths of a
//! call), so the same calls at the same times give the same answers.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// How a refusal for a principal's write rate starts (and how the audit log knows it).
pub const RULE: &str = "rule write-rate";

/// Principals whose buckets a node keeps; past it, the bucket idle longest is dropped (a full
/// bucket, as a new one would be, unless that principal is calling right now).
pub const PRINCIPALS_TRACKED_MAX: usize = 10_000;

/// Millionths of a call: a bucket's unit.
const MICRO: u128 = 1_000_000;

/// A rate: `calls` per `per_ms`, with a burst of `calls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub calls: u64,
    pub per_ms: u64,
}

impl Rate {
    /// `N`, `N/s` or `N/m` (calls per second or per minute); `0`: no limit.
    pub fn parse(text: &str) -> Result<Option<Rate>, String> {
        let (n, per_ms) = match text.trim().split_once('/') {
            None => (text.trim(), 1_000),
            Some((n, "s")) => (n, 1_000),
            Some((n, "m")) => (n, 60_000),
            Some((_, unit)) => {
                return Err(format!("{unit:?} is not a unit: N, N/s or N/m (calls per second or minute)"))
            }
        };
        let calls: u64 = n.trim().parse().map_err(|_| format!("{n:?} is not a whole number of calls"))?;
        if calls > 1_000_000 {
            return Err(format!("{calls} calls is over the limit of 1000000"));
        }
        Ok((calls > 0).then_some(Rate { calls, per_ms }))
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Millionths of a call available.
    micro: u128,
    at_ms: u64,
}

/// The buckets of one node.
#[derive(Debug)]
pub struct WriteRate {
    rate: Option<Rate>,
    buckets: Mutex<BTreeMap<String, Bucket>>,
}

impl WriteRate {
    pub fn new(rate: Option<Rate>) -> WriteRate {
        WriteRate { rate, buckets: Mutex::new(BTreeMap::new()) }
    }

    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Takes one call from `principal`'s bucket at `now_ms`; when it is empty, the
    /// milliseconds until it holds one again.
    pub fn take(&self, principal: &str, now_ms: u64) -> Result<(), u64> {
        let Some(rate) = self.rate else { return Ok(()) };
        let capacity = u128::from(rate.calls) * MICRO;
        let mut buckets = self.buckets.lock().expect("write-rate lock");
        if !buckets.contains_key(principal) && buckets.len() >= PRINCIPALS_TRACKED_MAX {
            let idle = buckets.iter().min_by_key(|(_, b)| b.at_ms).map(|(k, _)| k.clone());
            if let Some(idle) = idle {
                buckets.remove(&idle);
            }
        }
        let bucket = buckets.entry(principal.to_string()).or_insert(Bucket { micro: capacity, at_ms: now_ms });
        let elapsed = u128::from(now_ms.saturating_sub(bucket.at_ms));
        bucket.micro =
            (bucket.micro + elapsed * u128::from(rate.calls) * MICRO / u128::from(rate.per_ms)).min(capacity);
        bucket.at_ms = bucket.at_ms.max(now_ms);
        if bucket.micro >= MICRO {
            bucket.micro -= MICRO;
            return Ok(());
        }
        let missing = MICRO - bucket.micro;
        let per_ms = u128::from(rate.calls) * MICRO;
        let wait = (missing * u128::from(rate.per_ms)).div_ceil(per_ms);
        Err(u64::try_from(wait).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_rate_then_one_call_per_interval() {
        let w = WriteRate::new(Rate::parse("3/m").unwrap());
        assert_eq!((w.take("ci", 0), w.take("ci", 0), w.take("ci", 0)), (Ok(()), Ok(()), Ok(())));
        assert_eq!(w.take("ci", 0), Err(20_000), "one call per 20 s refills");
        assert_eq!(w.take("admin", 0), Ok(()), "each principal has its own bucket");
        assert_eq!(w.take("ci", 19_999), Err(1));
        assert_eq!(w.take("ci", 20_000), Ok(()));
        assert_eq!(w.take("ci", 20_000), Err(20_000));
        // Idle for long: the bucket is full again, never more.
        for _ in 0..3 {
            assert_eq!(w.take("ci", 10_000_000), Ok(()));
        }
        assert!(w.take("ci", 10_000_000).is_err());
    }

    #[test]
    fn no_rate_is_no_limit_and_bad_rates_are_named() {
        assert_eq!(Rate::parse("0"), Ok(None));
        assert_eq!(Rate::parse("200"), Ok(Some(Rate { calls: 200, per_ms: 1_000 })));
        assert_eq!(Rate::parse("5/s"), Ok(Some(Rate { calls: 5, per_ms: 1_000 })));
        assert!(Rate::parse("5/h").unwrap_err().contains("not a unit"));
        assert!(Rate::parse("lots").unwrap_err().contains("not a whole number"));
        assert!(Rate::parse("2000000").unwrap_err().contains("over the limit"));
        let w = WriteRate::new(None);
        assert!((0..10_000).all(|_| w.take("ci", 0).is_ok()));
    }

    #[test]
    fn the_buckets_kept_are_bounded() {
        let w = WriteRate::new(Rate::parse("1").unwrap());
        for i in 0..(PRINCIPALS_TRACKED_MAX as u64 + 5) {
            let _ = w.take(&format!("p{i}"), i);
        }
        assert_eq!(w.buckets.lock().unwrap().len(), PRINCIPALS_TRACKED_MAX);
    }
}
