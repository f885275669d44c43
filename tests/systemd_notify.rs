//! The real binary under a fake systemd: this test binds the `NOTIFY_SOCKET` datagram socket,
//! starts `ms5-edge run` with `NOTIFY_SOCKET` and `WATCHDOG_USEC`, and reads what it says.
//!
//! What counts as a stall (see `src/notify.rs`): a PLC poll loop that stops delivering reports.
//! An unreachable PLC is *not* one (its loop keeps reporting failed polls), so the first test
//! points the loader at a closed port and still expects pings. A real stall cannot be caused
//! from outside the process — every network wait has a timeout — so the second test uses the
//! daemon's test-only `MS5_EDGE_TEST_STALL_PLC` knob, which blocks the bagger's real poll task
//! on a channel nobody reads (what a hung core or a wedged task looks like from the inside).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::line::{config_text, line};
use common::{free_port, wait_for, DaemonProcess};

/// Everything the daemon sent, with arrival times.
#[derive(Clone, Default)]
struct Systemd {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Systemd {
    /// Binds the socket and records datagrams on a thread until the test ends.
    fn listen(path: &Path) -> Systemd {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        let s = Systemd::default();
        let messages = s.messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test process exits.
            loop {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    messages.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        s
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    fn lines_with(&self, needle: &str) -> Vec<(Instant, String)> {
        self.all()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l.starts_with(needle)))
            .collect()
    }
}

fn start(dir: &Path, text: &str, extra_env: &[(&str, String)]) -> (Systemd, DaemonProcess) {
    let socket = dir.join("notify.sock");
    let systemd = Systemd::listen(&socket);
    let config = dir.join("ms5-edge.toml");
    std::fs::write(&config, text).unwrap();
    let mut env = vec![
        ("NOTIFY_SOCKET", socket.display().to_string()),
        // 1 s watchdog: the daemon pings every 500 ms.
        ("WATCHDOG_USEC", "1000000".to_string()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.clone())));
    let daemon = DaemonProcess::start_with_env(&config, &dir.join("daemon.log"), &env);
    (systemd, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_comes_first_then_status_lines_and_watchdog_pings_even_with_one_plc_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let line = line().await;
    // The loader points at a closed port: offline, but its poll loop keeps reporting.
    let text = config_text(&line, &dir.path().join("data"), None, "").replacen(
        &format!("port = {}", line.loader.addr().port()),
        &format!("port = {}", free_port()),
        1,
    );
    let (systemd, mut daemon) = start(dir.path(), &text, &[]);

    wait_for("READY=1", Duration::from_secs(20), || {
        !systemd.lines_with("READY=1").is_empty()
    })
    .await;
    let all = systemd.all();
    assert!(
        all[0].1.contains("READY=1"),
        "READY=1 is the first message: {all:?}"
    );
    assert!(
        all[0].1.contains("STATUS=0/2 PLCs online"),
        "READY carries a status line: {all:?}"
    );
    wait_for(
        "a status line with the bagger online and the loader not",
        Duration::from_secs(20),
        || {
            systemd
                .lines_with("STATUS=1/2 PLCs online, outbox ")
                .iter()
                .any(|(_, m)| m.contains("no broker configured"))
        },
    )
    .await;
    let ready_at = systemd.lines_with("READY=1")[0].0;
    wait_for(
        "five watchdog pings after READY",
        Duration::from_secs(20),
        || {
            systemd
                .lines_with("WATCHDOG=1")
                .iter()
                .filter(|(t, _)| *t >= ready_at)
                .count()
                >= 5
        },
    )
    .await;
    let pings: Vec<Instant> = systemd
        .lines_with("WATCHDOG=1")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    for pair in pings.windows(2) {
        assert!(
            pair[1] - pair[0] < Duration::from_millis(1000),
            "pings come within the 1 s watchdog: {:?}",
            pair[1] - pair[0]
        );
    }
    let status = daemon.terminate();
    assert!(status.success(), "clean exit: {}", daemon.log_text());
    assert!(
        !systemd.lines_with("STOPPING=1").is_empty(),
        "STOPPING=1 on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_plc_poll_loop_stops_the_watchdog_pings() {
    let dir = tempfile::tempdir().unwrap();
    let line = line().await;
    let text = config_text(&line, &dir.path().join("data"), None, "");
    // The bagger (500 ms polls) delivers 6 reports, about 3 s, then its task blocks.
    let (systemd, mut daemon) = start(
        dir.path(),
        &text,
        &[("MS5_EDGE_TEST_STALL_PLC", "bagger:6".to_string())],
    );
    wait_for("READY=1", Duration::from_secs(20), || {
        !systemd.lines_with("READY=1").is_empty()
    })
    .await;
    wait_for(
        "a status line naming the stalled bagger",
        Duration::from_secs(30),
        || {
            !systemd.lines_with("STATUS=").is_empty() && {
                systemd
                    .lines_with("STATUS=")
                    .iter()
                    .any(|(_, m)| m.contains("STALLED: bagger"))
            }
        },
    )
    .await;
    let stalled_at = systemd
        .lines_with("STATUS=")
        .into_iter()
        .find(|(_, m)| m.contains("STALLED: bagger"))
        .map(|(t, _)| t)
        .unwrap();
    let pinged_before = systemd
        .lines_with("WATCHDOG=1")
        .iter()
        .filter(|(t, _)| *t < stalled_at)
        .count();
    assert!(
        pinged_before >= 3,
        "pings while the bagger still made progress"
    );
    // Absence can only be observed over time: 3 s is six ping periods and three full
    // watchdog timeouts, long enough for systemd to have killed the service.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: Vec<_> = systemd
        .lines_with("WATCHDOG=1")
        .into_iter()
        .filter(|(t, _)| *t > stalled_at)
        .collect();
    assert!(
        late.is_empty(),
        "no ping once the stall is seen, got {}",
        late.len()
    );
    assert!(
        daemon
            .log_text()
            .contains("withholding the systemd watchdog ping"),
        "{}",
        daemon.log_text()
    );
    daemon.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_check_asks_systemd_for_more_time_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let line = line().await;
    let text = config_text(&line, &dir.path().join("data"), None, "");
    // The store's test knob: the integrity check takes 2.5 s, as on a large database.
    let knob = [("MS5_EDGE_TEST_SLOW_CHECK_MS", "2500".to_string())];
    let (systemd, mut daemon) = start(dir.path(), &text, &knob);

    wait_for("READY=1", Duration::from_secs(30), || {
        !systemd.lines_with("READY=1").is_empty()
    })
    .await;
    let ready_at = systemd.lines_with("READY=1")[0].0;
    let extends = systemd.lines_with("EXTEND_TIMEOUT_USEC=");
    assert!(
        extends.iter().any(|(t, _)| *t < ready_at),
        "EXTEND_TIMEOUT_USEC before READY=1: {:?}",
        systemd.all()
    );
    assert!(
        extends[0].1.contains("EXTEND_TIMEOUT_USEC=10000000"),
        "ten more seconds each time: {:?}",
        extends[0]
    );
    assert!(daemon.terminate().success());
}
