//! The deterministic production scenario of the simulated machines: time in, process image out.
//!
//! Pure: [`image_at`] is a function of the machine and the elapsed scenario time only, so a test
//! (or a golden scenario) can compute every expected count, state and fault by hand.
//!
//! Counts: `units(t) = floor(run_ms(t) × rate_per_min / 60 000)`, where `run_ms(t)` is the time
//! spent running since scenario start (whole cycles plus the part of the current one). Every
//! `reject_every`-th unit is a reject: `reject = floor(units / reject_every)`,
//! `good = units − reject`. Both are monotonic and wrap like the PLC's `u32` registers would.

use std::f64::consts::PI;

/// Length of one scenario cycle; the timeline repeats after it.
pub const CYCLE_MS: u64 = 180_000;

/// Fault bit 0 of word 0 (Bagger 1: `FILM_BREAK`).
pub const FILM_BREAK: [u16; 4] = [0x0001, 0, 0, 0];
/// Fault bit 1 of word 0 (Basket Loader 1: `JAM`).
pub const JAM: [u16; 4] = [0x0002, 0, 0, 0];
const NO_FAULT: [u16; 4] = [0, 0, 0, 0];

/// A simulated machine. Each is its own Modbus TCP server with the same register map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Machine {
    /// Bagger 1, `BP01.PACK.BAG1`: ideal 120/min, runs at 110/min.
    Bagger,
    /// Basket Loader 1, `BP01.PACK.BAG1.BL`: ideal 60/min, runs at 55/min.
    Loader,
}

/// What a machine's PLC holds at one instant: everything the register map serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Image {
    /// `co:0`
    pub running: bool,
    /// `hr:100` f32 ABCD, units/min; 0 while stopped.
    pub speed: f32,
    /// `hr:102` u32 ABCD.
    pub good_count: u32,
    /// `hr:104` u32 ABCD.
    pub reject_count: u32,
    /// `hr:110..=113`: bit n of word k is fault 16k+n.
    pub fault_words: [u16; 4],
    /// `ir:10` i16, motor temperature in 0.1 °C.
    pub temp_raw: i16,
}

/// One step of a machine's timeline: from `from_ms` (within the cycle) until the next phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// Start, ms into the cycle.
    pub from_ms: u64,
    /// The `running` coil during the phase.
    pub running: bool,
    /// The fault words during the phase.
    pub fault_words: [u16; 4],
}

const fn phase(from_ms: u64, running: bool, fault_words: [u16; 4]) -> Phase {
    Phase {
        from_ms,
        running,
        fault_words,
    }
}

const BAGGER_TIMELINE: [Phase; 6] = [
    phase(0, true, NO_FAULT),
    phase(5_000, false, NO_FAULT), // minor stop, 4 s
    phase(9_000, true, NO_FAULT),
    phase(60_000, false, FILM_BREAK), // fault stop: film break trips the machine
    phase(97_000, false, NO_FAULT),   // fault reset, operator re-threads
    phase(100_000, true, NO_FAULT),   // 40 s stop in all
];

const LOADER_TIMELINE: [Phase; 7] = [
    phase(0, true, NO_FAULT),
    phase(8_000, false, NO_FAULT), // stop without a fault ...
    phase(12_000, false, JAM),     // ... the jam shows 4 s into the stop
    phase(40_000, false, NO_FAULT),
    phase(43_000, true, NO_FAULT),   // 35 s stop in all
    phase(120_000, false, NO_FAULT), // minor stop, 6 s
    phase(126_000, true, NO_FAULT),
];

/// Motor temperature model: first-order approach to a running or a stopped temperature.
struct Thermal {
    running_c: f64,
    stopped_c: f64,
    heat_tau_ms: f64,
    cool_tau_ms: f64,
    /// Amplitude and period of a small deterministic ripple (sensor and load noise).
    ripple_c: f64,
    ripple_period_ms: f64,
}

impl Machine {
    /// Equipment code in the example config.
    pub fn code(self) -> &'static str {
        match self {
            Machine::Bagger => "BP01.PACK.BAG1",
            Machine::Loader => "BP01.PACK.BAG1.BL",
        }
    }

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Bagger => "Bagger 1",
            Machine::Loader => "Basket Loader 1",
        }
    }

    /// Ideal rate, units/min (for the equipment config; the machine runs slower).
    pub fn ideal_rate_per_min(self) -> u32 {
        match self {
            Machine::Bagger => 120,
            Machine::Loader => 60,
        }
    }

    /// Actual rate while running, units/min.
    pub fn rate_per_min(self) -> u32 {
        match self {
            Machine::Bagger => 110,
            Machine::Loader => 55,
        }
    }

    /// Every this-many-th unit is a reject.
    pub fn reject_every(self) -> u32 {
        match self {
            Machine::Bagger => 40,
            Machine::Loader => 50,
        }
    }

    /// The repeating timeline, phases in order, the first at 0 ms.
    pub fn timeline(self) -> &'static [Phase] {
        match self {
            Machine::Bagger => &BAGGER_TIMELINE,
            Machine::Loader => &LOADER_TIMELINE,
        }
    }

    fn thermal(self) -> Thermal {
        match self {
            Machine::Bagger => Thermal {
                running_c: 58.0,
                stopped_c: 34.0,
                heat_tau_ms: 90_000.0,
                cool_tau_ms: 150_000.0,
                ripple_c: 0.15,
                ripple_period_ms: 9_000.0,
            },
            Machine::Loader => Thermal {
                running_c: 49.0,
                stopped_c: 31.0,
                heat_tau_ms: 120_000.0,
                cool_tau_ms: 200_000.0,
                ripple_c: 0.1,
                ripple_period_ms: 6_000.0,
            },
        }
    }
}

/// The phases of the cycle as `(from, to, phase)` with `to` exclusive.
fn segments(machine: Machine) -> impl Iterator<Item = (u64, u64, Phase)> {
    let timeline = machine.timeline();
    timeline.iter().enumerate().map(move |(i, p)| {
        let to = timeline.get(i + 1).map_or(CYCLE_MS, |n| n.from_ms);
        (p.from_ms, to, *p)
    })
}

/// The phase in force `ms_in_cycle` into a cycle.
pub fn phase_at(machine: Machine, ms_in_cycle: u64) -> Phase {
    let t = ms_in_cycle % CYCLE_MS;
    segments(machine)
        .find(|(from, to, _)| (*from..*to).contains(&t))
        .map_or(machine.timeline()[0], |(_, _, p)| p)
}

/// Milliseconds spent running in the first `ms_in_cycle` ms of a cycle.
fn run_ms_in_cycle(machine: Machine, ms_in_cycle: u64) -> u64 {
    segments(machine)
        .filter(|(_, _, p)| p.running)
        .map(|(from, to, _)| to.min(ms_in_cycle).saturating_sub(from))
        .sum()
}

/// Milliseconds spent running since scenario start.
pub fn run_ms(machine: Machine, elapsed_ms: u64) -> u64 {
    let per_cycle = run_ms_in_cycle(machine, CYCLE_MS);
    (elapsed_ms / CYCLE_MS) * per_cycle + run_ms_in_cycle(machine, elapsed_ms % CYCLE_MS)
}

/// Units made since scenario start (good + reject), not wrapped.
pub fn units(machine: Machine, elapsed_ms: u64) -> u64 {
    let units =
        u128::from(run_ms(machine, elapsed_ms)) * u128::from(machine.rate_per_min()) / 60_000;
    u64::try_from(units).unwrap_or(u64::MAX)
}

/// Motor temperature in °C: the periodic steady state of the thermal model, plus ripple.
fn temperature_c(machine: Machine, elapsed_ms: u64) -> f64 {
    let th = machine.thermal();
    // Temperature after `until` ms of a cycle that started at `t0`.
    let propagate = |t0: f64, until: u64| {
        segments(machine).fold(t0, |t, (from, to, p)| {
            let d = to.min(until).saturating_sub(from) as f64;
            let (target, tau) = if p.running {
                (th.running_c, th.heat_tau_ms)
            } else {
                (th.stopped_c, th.cool_tau_ms)
            };
            target + (t - target) * (-d / tau).exp()
        })
    };
    // One cycle maps the start temperature affinely: T1 = a·T0 + b. Its fixed point is the
    // temperature every cycle starts at once the machine has settled.
    let b = propagate(0.0, CYCLE_MS);
    let a = propagate(1.0, CYCLE_MS) - b;
    let start = b / (1.0 - a);
    let ripple = th.ripple_c * (2.0 * PI * elapsed_ms as f64 / th.ripple_period_ms).sin();
    propagate(start, elapsed_ms % CYCLE_MS) + ripple
}

/// What `machine`'s PLC holds `elapsed_ms` after the scenario started.
pub fn image_at(machine: Machine, elapsed_ms: u64) -> Image {
    let phase = phase_at(machine, elapsed_ms % CYCLE_MS);
    let units = units(machine, elapsed_ms);
    let rejects = units / u64::from(machine.reject_every());
    let temp = (temperature_c(machine, elapsed_ms) * 10.0).round();
    Image {
        running: phase.running,
        speed: if phase.running {
            machine.rate_per_min() as f32
        } else {
            0.0
        },
        // The PLC's u32 counters wrap; so do these.
        good_count: (units - rejects) as u32,
        reject_count: rejects as u32,
        fault_words: phase.fault_words,
        temp_raw: temp.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINES: [Machine; 2] = [Machine::Bagger, Machine::Loader];

    /// `(from, to)` of every contiguous window where `pred` holds, within one cycle, 100 ms grid.
    fn windows(machine: Machine, pred: impl Fn(&Image) -> bool) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut open: Option<u64> = None;
        for t in (0..=CYCLE_MS).step_by(100) {
            let holds = t < CYCLE_MS && pred(&image_at(machine, t));
            match (open, holds) {
                (None, true) => open = Some(t),
                (Some(from), false) => {
                    out.push((from, t));
                    open = None;
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn every_timeline_starts_at_zero_and_is_ordered_within_the_cycle() {
        for m in MACHINES {
            let t = m.timeline();
            assert_eq!(t[0].from_ms, 0);
            assert!(t.windows(2).all(|w| w[0].from_ms < w[1].from_ms));
            assert!(t.last().is_some_and(|p| p.from_ms < CYCLE_MS));
        }
    }

    #[test]
    fn counts_never_go_backwards_over_three_cycles() {
        for m in MACHINES {
            let mut last = image_at(m, 0);
            for t in (0..3 * CYCLE_MS).step_by(250) {
                let img = image_at(m, t);
                assert!(img.good_count >= last.good_count, "{m:?} good at {t}");
                assert!(img.reject_count >= last.reject_count, "{m:?} reject at {t}");
                last = img;
            }
        }
    }

    #[test]
    fn counts_grow_only_while_running() {
        for m in MACHINES {
            for t in (0..CYCLE_MS).step_by(500) {
                let (a, b) = (image_at(m, t), image_at(m, t + 500));
                let made = (b.good_count + b.reject_count) - (a.good_count + a.reject_count);
                if !a.running && !b.running {
                    assert_eq!(made, 0, "{m:?} made {made} while stopped at {t}");
                }
            }
        }
    }

    #[test]
    fn counts_are_exact_functions_of_run_time() {
        // Bagger: 136 s of running per cycle at 110/min, every 40th a reject.
        assert_eq!(run_ms(Machine::Bagger, CYCLE_MS), 136_000);
        let img = image_at(Machine::Bagger, CYCLE_MS);
        let units = 136_000 * 110 / 60_000; // 249
        assert_eq!(img.reject_count, units / 40);
        assert_eq!(img.good_count, units - units / 40);
        // Loader: 139 s per cycle at 55/min, every 50th a reject; two cycles.
        assert_eq!(run_ms(Machine::Loader, 2 * CYCLE_MS), 2 * 139_000);
        let img = image_at(Machine::Loader, 2 * CYCLE_MS);
        let units = 2 * 139_000 * 55 / 60_000; // 254
        assert_eq!(img.reject_count + img.good_count, units);
        assert_eq!(img.reject_count, units / 50);
    }

    #[test]
    fn each_machine_changes_state_within_ten_seconds_of_start() {
        for m in MACHINES {
            let first = image_at(m, 0);
            assert!(first.running);
            assert!(
                (0..=10_000)
                    .step_by(100)
                    .any(|t| image_at(m, t).running != first.running),
                "{m:?}"
            );
        }
    }

    #[test]
    fn the_bagger_has_a_four_second_minor_stop_without_a_fault_at_five_seconds() {
        let stops = windows(Machine::Bagger, |i| !i.running);
        assert_eq!(stops[0], (5_000, 9_000));
        assert!(windows(Machine::Bagger, |i| i.fault_words != [0; 4])
            .iter()
            .all(|(from, _)| *from > 9_000));
    }

    #[test]
    fn the_bagger_stops_forty_seconds_on_a_film_break_that_clears_before_it_restarts() {
        let stops = windows(Machine::Bagger, |i| !i.running);
        assert_eq!(stops, vec![(5_000, 9_000), (60_000, 100_000)]);
        let faults = windows(Machine::Bagger, |i| i.fault_words != [0; 4]);
        assert_eq!(faults, vec![(60_000, 97_000)]);
        assert_eq!(image_at(Machine::Bagger, 60_000).fault_words, FILM_BREAK);
    }

    #[test]
    fn the_loader_jam_appears_four_seconds_after_its_stop_started() {
        let stops = windows(Machine::Loader, |i| !i.running);
        assert_eq!(stops, vec![(8_000, 43_000), (120_000, 126_000)]);
        let faults = windows(Machine::Loader, |i| i.fault_words != [0; 4]);
        assert_eq!(faults, vec![(12_000, 40_000)]);
        assert_eq!(image_at(Machine::Loader, 12_000).fault_words, JAM);
        // No fault when the stop began: first-out must pick the first to appear during it.
        assert_eq!(image_at(Machine::Loader, 8_000).fault_words, [0; 4]);
    }

    #[test]
    fn speed_is_the_actual_rate_while_running_and_zero_while_stopped() {
        for m in MACHINES {
            for t in (0..CYCLE_MS).step_by(1_000) {
                let i = image_at(m, t);
                let expected = if i.running {
                    m.rate_per_min() as f32
                } else {
                    0.0
                };
                assert_eq!(i.speed, expected);
            }
        }
    }

    #[test]
    fn motor_temperature_drifts_within_a_plausible_band_and_repeats_each_cycle() {
        for m in MACHINES {
            let temps: Vec<i16> = (0..CYCLE_MS)
                .step_by(1_000)
                .map(|t| image_at(m, t).temp_raw)
                .collect();
            let (lo, hi) = (temps.iter().min().unwrap(), temps.iter().max().unwrap());
            assert!(*lo > 250 && *hi < 650, "{m:?} {lo}..{hi}");
            assert!(hi - lo >= 10, "{m:?} temperature should move: {lo}..{hi}");
            // Steady state: a cycle later the model is where it was (ripple aside).
            for t in [0, 30_000, 90_000] {
                let d = image_at(m, t).temp_raw - image_at(m, t + CYCLE_MS).temp_raw;
                assert!(d.abs() <= 3, "{m:?} at {t}: {d}");
            }
            // Cooling while stopped: the bagger's fault stop ends cooler than it began.
            if m == Machine::Bagger {
                assert!(image_at(m, 99_000).temp_raw < image_at(m, 60_000).temp_raw);
            }
        }
    }

    #[test]
    fn the_phase_lookup_wraps_with_the_cycle() {
        for m in MACHINES {
            assert_eq!(phase_at(m, 1_000), phase_at(m, CYCLE_MS + 1_000));
        }
    }
}
