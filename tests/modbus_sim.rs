//! The Modbus driver against the simulated PLCs, through real TCP on loopback.
//!
//! Every server binds 127.0.0.1:0. Values are frozen with an `Override`, so each assertion
//! compares what the poller decoded with what the simulator says it served.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ms5_edge::acquire::modbus::ModbusPoller;
use ms5_edge::acquire::{
    run_plc, EquipmentSample, PollError, PollReport, Poller, Quality, SignalReading, Value,
};
use ms5_edge::clock::Clock;
use ms5_edge::config::{DataType, Equipment, ModbusAddress, Plc, Protocol};
use ms5_edge::sim::{self, config as simcfg, Image, Machine, Override, SimHandle};
use tokio::sync::{mpsc, watch};

const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

/// A distinctive image, so a mixed-up register cannot pass by accident.
fn frozen() -> Override {
    Override {
        elapsed_ms: Some(30_000),
        running: Some(true),
        speed: Some(104.5),
        good_count: Some(123_456_789),
        reject_count: Some(4_321),
        fault_words: Some([0x0001, 0, 0x8000, 0x0002]),
        temp_raw: Some(-57),
    }
}

/// A simulator of `machine` with frozen values, and the config that reads it.
async fn simulator(machine: Machine) -> (SimHandle, Plc, Vec<Equipment>) {
    let sim = sim::start(machine, LOOPBACK.into())
        .await
        .expect("simulator starts");
    sim.set_override(frozen());
    let plc = simcfg::plc("plc", sim.addr(), 50, 500);
    let equipment = vec![simcfg::equipment(machine, "plc")];
    (sim, plc, equipment)
}

fn only(samples: &[EquipmentSample]) -> &BTreeMap<ms5_edge::sample::SignalName, SignalReading> {
    assert_eq!(samples.len(), 1);
    &samples[0].signals
}

fn good(value: Value) -> SignalReading {
    SignalReading {
        value: Some(value),
        quality: Quality::Good,
    }
}

fn bad() -> SignalReading {
    SignalReading {
        value: None,
        quality: Quality::Bad,
    }
}

/// What the poller must decode from `image` with the simulator's signal config.
fn expected(image: &Image) -> BTreeMap<ms5_edge::sample::SignalName, SignalReading> {
    BTreeMap::from([
        ("running".into(), good(Value::Bool(image.running))),
        ("speed".into(), good(Value::Float(f64::from(image.speed)))),
        (
            "good_count".into(),
            good(Value::UInt(u64::from(image.good_count))),
        ),
        (
            "reject_count".into(),
            good(Value::UInt(u64::from(image.reject_count))),
        ),
        (
            "faults".into(),
            good(Value::Array(
                image
                    .fault_words
                    .iter()
                    .map(|w| Value::UInt(u64::from(*w)))
                    .collect(),
            )),
        ),
        (
            "motor_temp_c".into(),
            good(Value::Float(f64::from(image.temp_raw) / 10.0)),
        ),
    ])
}

fn extra_u16(equipment: &mut Equipment, name: &str, register: u16) {
    equipment.signals.extra.push((
        name.to_string(),
        simcfg::modbus_signal(ModbusAddress::HoldingRegister(register), DataType::U16),
    ));
}

#[tokio::test]
async fn polled_values_equal_what_the_simulator_serves() {
    for machine in [Machine::Bagger, Machine::Loader] {
        let (sim, plc, equipment) = simulator(machine).await;
        let mut poller = ModbusPoller::new(&plc, &equipment);
        let samples = poller.poll().await.expect("poll succeeds");
        assert_eq!(samples[0].equipment, machine.code());
        assert_eq!(only(&samples), &expected(&sim.image()), "{machine:?}");
        assert!(poller.connected());
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn polled_values_follow_the_scenario_when_time_is_frozen_at_the_film_break() {
    let (sim, plc, equipment) = simulator(Machine::Bagger).await;
    sim.set_override(Override {
        elapsed_ms: Some(61_000),
        ..Override::default()
    });
    let image = sim.image();
    assert!(!image.running);
    assert_eq!(image.fault_words, [1, 0, 0, 0]);
    let mut poller = ModbusPoller::new(&plc, &equipment);
    let samples = poller.poll().await.expect("poll succeeds");
    assert_eq!(only(&samples), &expected(&image));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_signal_beyond_address_1000_is_bad_and_the_others_stay_good() {
    let (sim, plc, mut equipment) = simulator(Machine::Bagger).await;
    // Far from everything else: a request of its own.
    extra_u16(&mut equipment[0], "beyond", 1_500);
    let mut poller = ModbusPoller::new(&plc, &equipment);
    let samples = poller.poll().await.expect("the other signals still poll");
    let mut want = expected(&sim.image());
    want.insert("beyond".into(), bad());
    assert_eq!(only(&samples), &want);
    assert!(
        poller.connected(),
        "an exception does not drop the connection"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn an_exception_on_a_merged_read_isolates_the_bad_address_and_is_not_reissued() {
    let (sim, plc, mut equipment) = simulator(Machine::Bagger).await;
    // hr:998 exists, hr:1001 does not; planned together as hr:998..=1001.
    extra_u16(&mut equipment[0], "edge", 998);
    extra_u16(&mut equipment[0], "beyond", 1_001);
    let mut poller = ModbusPoller::new(&plc, &equipment);
    assert_eq!(poller.planned_requests().len(), 4);

    let before = sim.requests_served();
    let samples = poller.poll().await.expect("poll succeeds");
    let mut want = expected(&sim.image());
    want.insert("edge".into(), good(Value::UInt(0)));
    want.insert("beyond".into(), bad());
    assert_eq!(only(&samples), &want);
    // co:0, ir:10, hr:100..=113, hr:998..=1001 (refused), then hr:998 and hr:1001 alone.
    assert_eq!(sim.requests_served() - before, 6);

    // The next poll reads the good requests only; the refused one rests for a minute, and its
    // signal is stale (not asked) rather than bad (asked and refused).
    let before = sim.requests_served();
    let samples = poller.poll().await.expect("poll succeeds");
    want.insert(
        "beyond".into(),
        SignalReading {
            value: None,
            quality: Quality::Stale,
        },
    );
    assert_eq!(only(&samples), &want);
    assert_eq!(sim.requests_served() - before, 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_plc_refusing_every_read_fails_the_poll_with_an_exception_and_is_asked_again() {
    let (sim, mut plc, equipment) = simulator(Machine::Loader).await;
    // The simulator answers unit 1 (and 0, 255); unit 7 is "no such device behind the gateway".
    plc.protocol = Protocol::ModbusTcp {
        unit_id: 7,
        byte_order: Default::default(),
    };
    let mut poller = ModbusPoller::new(&plc, &equipment);
    for _ in 0..2 {
        let before = sim.requests_served();
        match poller.poll().await {
            Err(PollError::Exception(message)) => {
                assert!(message.contains("GatewayTargetDevice"), "{message}")
            }
            other => panic!("expected an exception, got {other:?}"),
        }
        // A device condition, not a bad address: no splitting, and re-tried every poll.
        assert_eq!(sim.requests_served() - before, 3);
    }
    assert!(poller.connected());
    sim.shutdown().await;
}

#[tokio::test]
async fn an_offline_plc_is_a_transport_error_and_the_next_poll_after_it_returns_recovers() {
    let (sim, plc, equipment) = simulator(Machine::Bagger).await;
    let mut poller = ModbusPoller::new(&plc, &equipment);
    poller.poll().await.expect("online");

    sim.set_online(false);
    // On the open connection...
    match poller.poll().await {
        Err(PollError::Transport(_)) => {}
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(
        !poller.connected(),
        "a transport error drops the connection"
    );
    // ... and on a fresh one.
    assert!(matches!(poller.poll().await, Err(PollError::Transport(_))));
    assert!(!poller.connected());

    sim.set_online(true);
    let samples = poller.poll().await.expect("recovers on the next poll");
    assert_eq!(only(&samples), &expected(&sim.image()));
    assert!(poller.connected());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_plc_that_never_answers_times_out_and_the_message_says_so() {
    // Accepts connections and never replies.
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(LOOPBACK))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (held_tx, mut held_rx) = mpsc::channel(4);
    let silent = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if held_tx.send(stream).await.is_err() {
                return;
            }
        }
    });
    let plc = simcfg::plc("silent", addr, 50, 100);
    let equipment = vec![simcfg::equipment(Machine::Bagger, "silent")];
    let mut poller = ModbusPoller::new(&plc, &equipment);
    match poller.poll().await {
        Err(PollError::Transport(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(!poller.connected());
    assert!(held_rx.recv().await.is_some(), "the connection was made");
    silent.abort();
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let sim = sim::start(Machine::Bagger, LOOPBACK.into()).await.unwrap();
    let addr = sim.addr();
    sim.shutdown().await; // the port is closed now
    let plc = simcfg::plc("gone", addr, 50, 500);
    let equipment = vec![simcfg::equipment(Machine::Bagger, "gone")];
    let mut poller = ModbusPoller::new(&plc, &equipment);
    match poller.poll().await {
        Err(PollError::Transport(m)) => assert!(m.contains("connect to"), "{m}"),
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(!poller.connected());
}

#[tokio::test]
async fn run_plc_stamps_its_reports_with_ticks_exactly_50_ms_apart() {
    let (sim, plc, equipment) = simulator(Machine::Bagger).await;
    assert_eq!(plc.poll_interval_ms, 50);
    let poller = ModbusPoller::new(&plc, &equipment);
    let (out_tx, mut out_rx) = mpsc::channel::<PollReport>(16);
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run_plc(plc, poller, Clock::system(), out_tx, stop_rx));

    let mut reports = Vec::new();
    while reports.len() < 8 {
        reports.push(out_rx.recv().await.expect("a report per tick"));
    }
    for r in &reports {
        let samples = r.outcome.as_ref().expect("every poll succeeds");
        assert_eq!(only(samples), &expected(&sim.image()));
        assert_eq!(r.plc, "plc");
    }
    for pair in reports.windows(2) {
        // A tick skipped on a loaded machine is counted, never bunched: the stamps stay on the
        // 50 ms grid either way.
        let skipped = pair[1].counters.skipped_ticks - pair[0].counters.skipped_ticks;
        assert_eq!(
            pair[1].scheduled_ms - pair[0].scheduled_ms,
            50 * (1 + skipped as i64),
            "{} -> {}",
            pair[0].scheduled_ms,
            pair[1].scheduled_ms
        );
    }
    let last = &reports[reports.len() - 1].counters;
    assert_eq!(last.failed_polls, 0);
    assert_eq!(last.polls, reports.len() as u64);

    stop_tx.send_replace(true);
    task.await.expect("the poll loop stops on shutdown");
    sim.shutdown().await;
}
