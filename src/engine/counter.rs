//! Counter deltas that survive PLC counter resets and wrap-around (SPEC §6).
//!
//! The first value ever read is a baseline (no delta). A drop from the top tenth of the
//! declared type's range to its bottom tenth is a wrap-around; any other drop is a reset, where
//! the new value itself is the delta.

use serde::{Deserialize, Serialize};

/// One counter's memory: the last value read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counter {
    pub last: Option<u64>,
}

impl Counter {
    /// Feeds a new reading; returns the count since the previous one.
    pub fn delta(&mut self, value: u64, max: u64) -> u64 {
        let d = match self.last {
            None => 0,
            Some(last) if value >= last => value - last,
            Some(last) => {
                let tenth = max / 10;
                if last >= max - tenth && value <= tenth {
                    (max - last) + value + 1
                } else {
                    value
                }
            }
        };
        self.last = Some(value);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_is_a_baseline() {
        let mut c = Counter::default();
        assert_eq!(c.delta(1000, u32::MAX as u64), 0);
        assert_eq!(c.delta(1005, u32::MAX as u64), 5);
    }

    #[test]
    fn a_drop_from_the_top_tenth_to_the_bottom_tenth_is_a_wrap() {
        let mut c = Counter { last: Some(65_530) };
        assert_eq!(c.delta(4, 65_535), 10);
    }

    #[test]
    fn any_other_drop_is_a_reset_and_the_new_value_is_the_delta() {
        let mut c = Counter { last: Some(5_000) };
        assert_eq!(c.delta(7, 65_535), 7);
        assert_eq!(c.delta(9, 65_535), 2);
    }
}
