//! Seeded randomness: a small, fast generator and the distributions scenarios use.
//!
//! Nothing in the study reads an unseeded source. Draws that must be the same across the
//! variants of a comparison (a pass's duration, whether an attempt fails) come from
//! [`Rng::keyed`], a generator derived from the seed and the thing drawn for, so they do not
//! depend on the order in which one policy or another happens to get there.

/// SplitMix64: 64 bits of state, statistically solid for simulation, trivially seedable.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// A generator for one named draw: the same `(seed, parts)` always gives the same stream.
    pub fn keyed(seed: u64, parts: &[u64]) -> Rng {
        let mut h = seed;
        for p in parts {
            h = mix(h ^ mix(*p));
        }
        Rng(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of a string (FNV-1a), for keyed draws.
pub fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A duration distribution in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist {
    /// Always this long.
    Fixed(u64),
    /// Uniform between the two.
    Uniform(u64, u64),
    /// Exponential with this mean.
    Exp(u64),
    /// Log-normal given by its median and 90th percentile (the usual shape of task times:
    /// most are near the median, a long tail is several times longer).
    LogNormal { median: u64, p90: u64 },
}

/// z of the 90th percentile of the standard normal.
const Z90: f64 = 1.281_551_565_545;

impl Dist {
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let v = match *self {
            Dist::Fixed(ms) => ms as f64,
            Dist::Uniform(lo, hi) => lo as f64 + rng.unit() * (hi.saturating_sub(lo)) as f64,
            Dist::Exp(mean) => rng.exp(mean as f64),
            Dist::LogNormal { median, p90 } => {
                let sigma = ((p90.max(median) as f64) / (median.max(1) as f64)).ln() / Z90;
                median as f64 * (sigma * rng.normal()).exp()
            }
        };
        v.clamp(1.0, DURATION_MS_CAP as f64) as u64
    }

    pub fn mean_ms(&self) -> f64 {
        match *self {
            Dist::Fixed(ms) => ms as f64,
            Dist::Uniform(lo, hi) => (lo + hi) as f64 / 2.0,
            Dist::Exp(mean) => mean as f64,
            Dist::LogNormal { median, p90 } => {
                let sigma = ((p90.max(median) as f64) / (median.max(1) as f64)).ln() / Z90;
                median as f64 * (sigma * sigma / 2.0).exp()
            }
        }
    }
}

/// No sampled duration is longer than a day.
pub const DURATION_MS_CAP: u64 = 24 * 3_600_000;

/// Durations in scenario files: the one grammar of [`qm_shared::duration`].
pub use qm_shared::duration::parse_duration_ms as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_draws_do_not_depend_on_order() {
        let a = Rng::keyed(7, &[1, 2]).next_u64();
        let _ = Rng::keyed(7, &[3]).next_u64();
        assert_eq!(a, Rng::keyed(7, &[1, 2]).next_u64());
        assert_ne!(a, Rng::keyed(8, &[1, 2]).next_u64());
    }

    #[test]
    fn lognormal_has_its_median_and_p90() {
        let d = Dist::LogNormal { median: 600_000, p90: 1_800_000 };
        let mut rng = Rng::new(1);
        let mut v: Vec<u64> = (0..20_000).map(|_| d.sample(&mut rng)).collect();
        v.sort_unstable();
        let (med, p90) = (v[10_000] as f64, v[18_000] as f64);
        assert!((med / 600_000.0 - 1.0).abs() < 0.05, "median {med}");
        assert!((p90 / 1_800_000.0 - 1.0).abs() < 0.08, "p90 {p90}");
    }
}
