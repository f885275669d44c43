//! A fixed-size latency histogram for the cadence counters: constant memory, O(1) record,
//! percentiles without sorting.
//!
//! Why not keep the samples and sort them: at 20 PLCs × 10 polls/s a per-report sort of a
//! window would cost more CPU than the polls themselves. Log-linear buckets (16 per power of
//! two above 32 µs, exact below) bound the relative error of a reported percentile to
//! 1/16 = 6.25 %, always rounding *up* (a percentile is reported as the upper edge of its
//! bucket), which is the safe side for a "p99 ≤ 1 ms" target.
//!
//! Pure: no clock, no I/O; values are passed in.

/// Values below this are counted exactly, one bucket each.
const LINEAR: u64 = 32;
/// Sub-buckets per power of two above [`LINEAR`] (4 bits of precision).
const SUB: u64 = 16;
/// Powers of two covered above [`LINEAR`]: 2^5 .. 2^41 µs (~25 days), more is clamped.
const OCTAVES: u64 = 36;
const BUCKETS: usize = (LINEAR + OCTAVES * SUB) as usize;

/// Counts of microsecond values in log-linear buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Counts one value.
    pub fn record(&mut self, value_us: u64) {
        let i = bucket(value_us);
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(value_us);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded, exactly.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at or below which `q` (0..=1) of the recorded values lie, as the upper edge of
    /// its bucket (never above [`Histogram::max`]); 0 when nothing was recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // The last bucket also holds everything clamped into it.
                if i == BUCKETS - 1 {
                    return self.max;
                }
                return upper_edge(i).min(self.max);
            }
        }
        self.max
    }
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let octave = u64::from(63 - v.leading_zeros()); // ≥ 5
    let rel = octave - 5;
    if rel >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = (v >> (octave - 4)) & (SUB - 1);
    (LINEAR + rel * SUB + sub) as usize
}

fn upper_edge(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let rel = (i - LINEAR) / SUB;
    let sub = (i - LINEAR) % SUB;
    let octave = rel + 5;
    let width = 1u64 << (octave - 4);
    (1u64 << octave) + (sub + 1) * width - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_counted_exactly() {
        let mut h = Histogram::default();
        for v in [0, 1, 2, 3, 31] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 2);
        assert_eq!(h.quantile(1.0), 31);
    }

    #[test]
    fn a_percentile_is_never_below_the_true_value_and_at_most_a_sixteenth_above() {
        for v in [
            32u64,
            33,
            100,
            999,
            1000,
            1001,
            65_535,
            1_000_000,
            123_456_789,
        ] {
            let i = bucket(v);
            let edge = upper_edge(i);
            assert!(edge >= v, "{v} -> bucket edge {edge}");
            assert!((edge - v) as f64 <= v as f64 / 16.0, "{v} -> {edge}");
        }
    }

    #[test]
    fn p99_of_a_hundred_values_is_the_largest_but_one_bucket() {
        let mut h = Histogram::default();
        for v in 1..=100u64 {
            h.record(v * 10);
        }
        let p99 = h.quantile(0.99);
        assert!((990..=990 + 990 / 16).contains(&p99), "{p99}");
        assert_eq!(h.max(), 1000);
        assert_eq!(h.quantile(1.0), 1000, "never above the exact maximum");
    }

    #[test]
    fn an_empty_histogram_reports_zero() {
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }

    #[test]
    fn huge_values_land_in_the_last_bucket_without_panicking() {
        let mut h = Histogram::default();
        h.record(u64::MAX);
        assert_eq!(h.quantile(0.5), u64::MAX);
    }
}
