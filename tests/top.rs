//! `ms5-edge top` end to end (SPEC §10): the daemon runs as a process on the simulated line
//! with a real mosquitto; `top` reads its database read-only. The full screen is driven in a
//! real pseudo-terminal of 80×24 through `tmux` (captured with `capture-pane`, quit with
//! `send-keys q`); `--plain` runs with a pipe for stdout and stops on SIGINT.
//!
//! Every wait polls the thing itself (the captured screen, the printed lines, the exit file)
//! against a deadline; none sleeps in place of synchronisation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::line::BAGGER;
use common::rig::{Rig, RigOptions};
use common::{unsafe_kill, Received};
use ms5_edge::sim::Override;

const BIN: &str = env!("CARGO_BIN_EXE_ms5-edge");

/// Bit 2 of the bagger's first fault word: the emergency stop the config below adds.
const E_STOP_WORDS: [u16; 4] = [0x0004, 0, 0, 0];

/// The demo line with an emergency stop on the bagger: safety, critical, andon.
fn with_e_stop(text: String, _: &Path) -> String {
    text.replacen(
        "\n[[equipment]]\ncode = \"BP01.PACK.BAG1.BL\"",
        "\n[[equipment.fault]]\nbit = 2\ncode = \"E_STOP\"\ndescription = \"Emergency stop pressed\"\n\
         category = \"safety\"\nseverity = \"critical\"\nandon = true\n\n\
         [[equipment]]\ncode = \"BP01.PACK.BAG1.BL\"",
        1,
    )
}

fn andon_raised(m: &[Received]) -> bool {
    m.iter().any(|r| {
        !r.retain && r.payload["type"] == "ms5.andon.raised" && r.payload["equipment"] == BAGGER
    })
}

/// A tmux server of this test only (its own socket), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        let found = Command::new("tmux")
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "tmux is not installed: tests/top.rs drives `ms5-edge top` in a pseudo-terminal \
             through it. Run scripts/test (it installs it), or `apt-get install tmux`."
        );
        Tmux {
            socket: dir.join("tmux.sock"),
        }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .env_remove("TMUX")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// What session `target` shows now.
    fn screen(&self, target: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", target]).stdout)
            .into_owned()
    }

    /// Polls the screen until `cond` holds; panics with the last screen at the deadline.
    async fn wait_screen(
        &self,
        target: &str,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen(target);
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; the screen:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

async fn wait_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_equipment_its_state_the_oee_bars_and_the_open_andon_and_q_quits_with_0() {
    let rig = Rig::prepare(RigOptions {
        bagger_at_ms: Some(10_000),
        config_edit: Some(Box::new(with_e_stop)),
        ..RigOptions::default()
    })
    .await;
    assert!(
        rig.config_text.contains("E_STOP"),
        "the fault was added to the config"
    );
    let _daemon = rig.spawn("daemon.log");
    rig.wait_state("running").await;
    rig.line.bagger.set_override(Override {
        running: Some(false),
        fault_words: Some(E_STOP_WORDS),
        ..Override::default()
    });
    rig.sub
        .wait("the safety andon", Duration::from_secs(30), andon_raised)
        .await;

    let tmux = Tmux::new(rig.dir.path());
    let exit = rig.dir.path().join("top.exit");
    let script = format!(
        "{BIN} top -c '{}'; echo $? > '{}'",
        rig.config_path.display(),
        exit.display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "top",
        &script,
    ]);
    assert!(
        out.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server outlives this session (it is killed on drop): the second `top` below starts
    // after `q` ended the first, and a server exiting with its last session refused it once.
    let out = tmux.cmd(&["set-option", "-g", "exit-empty", "off"]);
    assert!(
        out.status.success(),
        "tmux set-option: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let screen = tmux
        .wait_screen(
            "top",
            "the bagger faulted with its andon",
            Duration::from_secs(20),
            |s| {
                s.contains("BP01.PACK.BAG1 Bagger 1")
                    && s.contains("FAULTED")
                    && s.contains("E_STOP")
            },
        )
        .await;
    println!("the screen at 80x24:\n{screen}");
    let rows: Vec<&str> = screen.lines().collect();
    assert!(rows.len() <= 24, "{} rows", rows.len());
    let row = |needle: &str| {
        rows.iter()
            .find(|r| r.contains(needle))
            .unwrap_or_else(|| panic!("no row with {needle:?}:\n{screen}"))
            .to_string()
    };
    assert!(row("BP01.PACK.BAG1 Bagger 1").contains("since"));
    let bars = row("OEE ");
    for label in ["A ", "P ", "Q "] {
        assert!(bars.contains(label), "{label:?} bar in {bars:?}");
    }
    let andon = row("ANDON");
    assert!(
        andon.contains("critical") && andon.contains("E_STOP Emergency stop pressed"),
        "{andon}"
    );
    assert!(row("BP01.PACK.BAG1.BL").contains("Basket Loader"));
    assert!(row("bagger ").contains("online"));
    assert!(row("outbox").contains("broker"));
    assert!(screen.contains("daemon running"), "{screen}");
    // Recent events come from the domain tables (the outbox is drained by the uplink).
    assert!(row("recent events").starts_with("recent events"));
    assert!(row("andon critical L1 E_STOP").contains(BAGGER), "{screen}");
    assert!(row("state faulted").contains(BAGGER), "{screen}");

    // Resize-safe: shrunk to 40×10 it redraws clipped (the PLC table no longer fits), and
    // back at 80×24 it shows everything again.
    for (w, h, shown, hidden) in [
        ("40", "10", "ms5-edge top", "late p99"),
        ("80", "24", "late p99", ""),
    ] {
        let out = tmux.cmd(&["resize-window", "-t", "top", "-x", w, "-y", h]);
        assert!(
            out.status.success(),
            "resize: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = tmux
            .wait_screen(
                "top",
                &format!("the screen at {w}x{h}"),
                Duration::from_secs(10),
                |s| s.contains(shown) && (hidden.is_empty() || !s.contains(hidden)),
            )
            .await;
        let width: usize = w.parse().unwrap_or(80);
        assert!(s.lines().all(|l| l.chars().count() <= width), "{s}");
    }

    let out = tmux.cmd(&["send-keys", "-t", "top", "q"]);
    assert!(out.status.success());
    let code = wait_file(&exit, Duration::from_secs(10)).await;
    assert_eq!(code.trim(), "0", "top's exit status after q");

    // SIGTERM from elsewhere (a closed SSH session, `kill`) on the full screen: exit 0 too.
    let exit = rig.dir.path().join("top2.exit");
    let script = format!(
        "{BIN} top -c '{}'; echo $? > '{}'",
        rig.config_path.display(),
        exit.display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "top2",
        &script,
    ]);
    assert!(
        out.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Signalled once it draws (before the exec a signal would hit the forked shell).
    tmux.wait_screen("top2", "the second top", Duration::from_secs(20), |s| {
        s.contains("daemon running")
    })
    .await;
    let shell = String::from_utf8_lossy(
        &tmux
            .cmd(&["display", "-p", "-t", "top2", "#{pane_pid}"])
            .stdout,
    )
    .trim()
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        // The pane's shell runs `top` as its child (looked up by parent, not by name).
        let out = Command::new("pgrep")
            .args(["-P", &shell])
            .output()
            .expect("pgrep");
        if let Some(p) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
        {
            break p.parse::<u32>().expect("a pid");
        }
        assert!(
            Instant::now() < deadline,
            "no top under the pane's shell {shell}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    unsafe_kill(pid, "TERM");
    let code = wait_file(&exit, Duration::from_secs(10)).await;
    assert_eq!(code.trim(), "0", "top's exit status after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_plain_prints_a_line_per_change_and_exits_0_on_sigint() {
    let rig = Rig::prepare(RigOptions {
        bagger_at_ms: Some(10_000),
        ..RigOptions::default()
    })
    .await;
    let _daemon = rig.spawn("daemon.log");
    rig.wait_state("running").await;

    let mut top = Command::new(BIN)
        .args(["top", "--plain", "-c"])
        .arg(&rig.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ms5-edge top --plain");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = top.stdout.take().expect("piped stdout");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    let has = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    common::wait_for("the first lines", Duration::from_secs(10), || {
        has("BP01.PACK.BAG1 state running") && has("plc bagger online") && has("daemon running")
    })
    .await;

    // A change: the bagger stops. One new line says so; nothing repeats meanwhile.
    rig.line
        .bagger
        .set_override(common::line::hold_running(false));
    common::wait_for("the stop to be printed", Duration::from_secs(20), || {
        has("BP01.PACK.BAG1 state stopped")
    })
    .await;
    let printed = lines.lock().unwrap().clone();
    let running = printed
        .iter()
        .filter(|l| l.ends_with("BP01.PACK.BAG1 state running"))
        .count();
    assert_eq!(
        running, 1,
        "a line per change, not per second: {printed:#?}"
    );
    assert!(
        printed.iter().all(|l| l.starts_with("20")),
        "each line starts with its time: {printed:#?}"
    );

    unsafe_kill(top.id(), "INT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = top.try_wait().expect("wait for top") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "top --plain did not exit on SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn top_without_a_database_says_so_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let text = ms5_edge::demo::config_text(
        1502,
        1503,
        &dir.path().join("data").display().to_string(),
        None,
    );
    let config = dir.path().join("ms5-edge.toml");
    std::fs::write(&config, text).unwrap();
    for plain in [true, false] {
        let mut cmd = Command::new(BIN);
        cmd.args(["top", "-c"]).arg(&config);
        if plain {
            cmd.arg("--plain");
        }
        let out = cmd.output().expect("run ms5-edge top");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("has the daemon ever run with this config?"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
}
