//! Securing commands on a real broker (SPEC §7): with `[commands] key_file`, only a correctly
//! signed, fresh, first-seen, enabled command changes anything; every other one gets one
//! `ok:false` reply on `P/reply` naming why. A flood on unknown equipment names shares one
//! budget and cannot reset the budget of the real equipment. `ms5-edge sign` produces what
//! python's own `hmac` computes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::line::{hold_running, BAGGER, PREFIX};
use common::rig::{cmd_topic, ClientOptions, Rig, RigOptions};
use common::{wait_for, Subscriber};
use ms5_edge::daemon::Observers;
use ms5_edge::uplink::signature;
use rumqttc::{AsyncClient, QoS};
use serde_json::Value;

const KEY: [u8; 32] = *b"0123456789abcdef0123456789ABCDEF";

/// The commander of this file: 1 MiB packets and room for a flood of 1 100 queued publishes.
fn commander() -> ClientOptions {
    ClientOptions {
        cap: 2000,
        ..ClientOptions::commander()
    }
}

/// Waits for the reply to `id` and returns it.
async fn reply_to(r: &Running, id: &str) -> Value {
    r.rig.wait_reply(id, Duration::from_secs(20)).await
}

fn rfc3339(at: jiff::Timestamp) -> String {
    format!("{at:.3}")
}

fn cmd(command: &str) -> String {
    cmd_topic(BAGGER, command)
}

/// Operators named by `context.changed` events on the bagger, in arrival order.
fn operators(sub: &Subscriber) -> Vec<String> {
    sub.snapshot()
        .into_iter()
        .filter(|m| m.topic == format!("{PREFIX}/{BAGGER}/context") && !m.retain)
        .filter_map(|m| m.payload["data"]["operator"].as_str().map(str::to_string))
        .collect()
}

struct Running {
    rig: Rig,
    sub: Subscriber,
    client: AsyncClient,
    observers: Observers,
}

/// The demo line with `commands` as its `[commands]` table (`{KEY_FILE}` → a key file holding
/// [`KEY`]), running until `finish`, with the bagger running.
async fn start(commands: &str) -> Running {
    let commands = commands.to_string();
    let rig = Rig::start(RigOptions {
        bagger: Some(hold_running(true)),
        config_edit: Some(Box::new(move |mut text: String, dir: &Path| {
            let key_file = dir.join("command.key");
            std::fs::write(&key_file, KEY).unwrap();
            text.push_str(&format!(
                "\n[commands]\n{}\n",
                commands.replace("{KEY_FILE}", &key_file.display().to_string())
            ));
            text
        })),
        ..RigOptions::default()
    })
    .await;
    rig.wait_state_after("running", 0, Duration::from_secs(20))
        .await;
    let client = rig.client(commander()).await;
    Running {
        sub: rig.sub.clone(),
        observers: rig.observers().clone(),
        client,
        rig,
    }
}

impl Running {
    async fn publish(&self, topic: &str, body: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body.into())
            .await
            .unwrap();
    }

    async fn finish(mut self) {
        self.rig.stop_within(Duration::from_secs(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_fresh_first_seen_enabled_commands_change_anything() {
    let r = start(
        "key_file = \"{KEY_FILE}\"\nmax_age_s = 60\n\
         enabled = [\"context\", \"andon/*\", \"downtime/reason\", \"planned-stop/*\", \"changeover/*\"]",
    )
    .await;
    let now = jiff::Timestamp::now();
    let topic = cmd("context");
    let body = |id: &str, operator: &str| {
        format!(r#"{{"request_id":"{id}","by":"lead","operator":"{operator}"}}"#)
    };

    // A signed command is accepted and applied.
    let signed =
        signature::sign_body(&KEY, &topic, &body("good", "alice"), &rfc3339(now)).expect("sign");
    r.publish(&topic, signed.clone()).await;
    let ok = reply_to(&r, "good").await;
    assert_eq!(ok["ok"], true, "{ok}");
    wait_for("alice in the context", Duration::from_secs(20), || {
        operators(&r.sub).contains(&"alice".to_string())
    })
    .await;

    // Each of these gets ok:false naming why, and changes nothing.
    let unsigned = format!(
        r#"{{"request_id":"unsigned","by":"x","operator":"mallory","issued_at":"{}"}}"#,
        rfc3339(now)
    );
    let forged = signature::sign_body(&[7; 32], &topic, &body("forged", "mallory"), &rfc3339(now))
        .expect("sign");
    let ten_min = jiff::SignedDuration::from_secs(600);
    let stale = signature::sign_body(
        &KEY,
        &topic,
        &body("stale", "mallory"),
        &rfc3339(now - ten_min),
    )
    .expect("sign");
    let future = signature::sign_body(
        &KEY,
        &topic,
        &body("future", "mallory"),
        &rfc3339(now + ten_min),
    )
    .expect("sign");
    // Signed for the other equipment, sent to the bagger.
    let moved = signature::sign_body(
        &KEY,
        &format!("{PREFIX}/cmd/BP01.PACK.BAG1.BL/context"),
        &body("moved", "mallory"),
        &rfc3339(now),
    )
    .expect("sign");
    let disabled = signature::sign_body(
        &KEY,
        &cmd("job/start"),
        r#"{"request_id":"disabled","by":"x"}"#,
        &rfc3339(now),
    )
    .expect("sign");
    r.publish(&topic, unsigned).await;
    r.publish(&topic, forged).await;
    r.publish(&topic, stale).await;
    r.publish(&topic, future).await;
    r.publish(&topic, moved).await;
    // The exact bytes of the accepted command once more: a replay.
    r.publish(&topic, signed).await;
    r.publish(&cmd("job/start"), disabled).await;

    for (id, needle) in [
        ("unsigned", "unsigned command"),
        ("forged", "bad signature"),
        ("stale", "stale command: issued 600 s ago"),
        ("future", "s ahead of the gateway's clock"),
        ("moved", "bad signature"),
        ("good", "replayed command"),
        ("disabled", "command disabled"),
    ] {
        let what = format!("a refusal of {id} naming {needle:?}");
        r.sub
            .wait(&what, Duration::from_secs(20), |m| {
                m.iter().any(|x| {
                    x.topic == format!("{PREFIX}/reply")
                        && x.payload["request_id"] == id
                        && x.payload["ok"] == false
                        && x.payload["error"]
                            .as_str()
                            .is_some_and(|e| e.contains(needle))
                })
            })
            .await;
    }

    // A last signed command goes through the same queue and the core after everything above:
    // once its change is out, anything above that had been applied would be out too.
    let marker = signature::sign_body(
        &KEY,
        &topic,
        &body("marker", "bob"),
        &rfc3339(jiff::Timestamp::now()),
    )
    .expect("sign");
    r.publish(&topic, marker).await;
    assert_eq!(reply_to(&r, "marker").await["ok"], true);
    wait_for("bob in the context", Duration::from_secs(20), || {
        operators(&r.sub).contains(&"bob".to_string())
    })
    .await;
    assert_eq!(
        operators(&r.sub),
        ["alice", "bob"],
        "only signed commands changed the context"
    );
    let all = r.rig.replies();
    assert_eq!(
        all.iter().filter(|x| x["ok"] == true).count(),
        2,
        "exactly the two signed commands succeeded: {all:#?}"
    );
    assert!(
        all.iter().filter(|x| x["request_id"] == "good").count() == 2,
        "one ok and one replay refusal for \"good\""
    );
    assert!(r.observers.uplink.commands_rejected.load(Ordering::Relaxed) >= 7);
    r.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_unknown_equipment_names_does_not_reset_the_real_equipments_budget() {
    let r = start("max_age_s = 60").await;
    let ack = |id: &str| format!(r#"{{"request_id":"{id}","by":"x","andon_id":"none"}}"#);
    let t0 = Instant::now();

    // Spend the bagger's burst.
    for n in 0..20 {
        r.publish(&cmd("andon/ack"), ack(&format!("first-{n}")))
            .await;
    }
    for n in 0..20 {
        let reply = reply_to(&r, &format!("first-{n}")).await;
        let error = reply["error"].as_str().unwrap_or("");
        assert!(!error.contains("rate limited"), "the burst fits: {reply}");
    }

    // 1 100 commands to equipment that does not exist, each under another name.
    let rejected_before = r.observers.uplink.commands_rejected.load(Ordering::Relaxed);
    for n in 0..1100 {
        r.publish(
            &format!("{PREFIX}/cmd/NOPE-{n}/andon/ack"),
            ack(&format!("unknown-{n}")),
        )
        .await;
    }
    wait_for(
        "the gate to refuse the flood",
        Duration::from_secs(30),
        || r.observers.uplink.commands_rejected.load(Ordering::Relaxed) >= rejected_before + 1100,
    )
    .await;
    // Replies are best effort under a flood; this one comes after the flood has drained.
    r.publish(
        &format!("{PREFIX}/cmd/NOPE-marker/andon/ack"),
        ack("unknown-marker"),
    )
    .await;
    reply_to(&r, "unknown-marker").await;

    // Now a burst of 40 for the real equipment.
    for n in 0..40 {
        r.publish(&cmd("andon/ack"), ack(&format!("real-{n}")))
            .await;
    }
    let mut limited = 0;
    let mut passed = 0;
    for n in 0..40 {
        let reply = reply_to(&r, &format!("real-{n}")).await;
        assert_eq!(
            reply["ok"], false,
            "no andon \"none\" to acknowledge: {reply}"
        );
        if reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("rate limited"))
        {
            limited += 1;
        } else {
            passed += 1;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // The bagger's bucket was left empty by the first burst and only refilled at 5/s since; had
    // the unknown names evicted or reset it, the whole burst of 20 would have passed again.
    let refilled = (5.0 * elapsed).floor() as usize + 1;
    assert!(limited > 0, "some of the real burst is rate limited");
    assert!(
        passed <= refilled.min(20),
        "{passed} passed after {elapsed:.1} s; at most {refilled} tokens could have come back"
    );
    // The unknown names shared one bucket: at most its burst plus its refill got as far as
    // "unknown equipment"; the rest were rate limited.
    let all = r.rig.replies();
    let unknown_named = all
        .iter()
        .filter(|x| {
            x["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("unknown equipment"))
        })
        .count();
    eprintln!(
        "flood: {passed} real passed, {limited} rate limited after {elapsed:.2} s; \
         {unknown_named} unknown names reached the equipment check"
    );
    assert!(
        unknown_named <= 20 + refilled,
        "{unknown_named} unknown-equipment commands got past the shared budget"
    );
    r.finish().await;
}

/// HMAC-SHA256 hex of `topic \n body` computed by python's standard library.
fn python_hmac(key_file: &Path, topic: &str, body: &str) -> String {
    let script = "import hmac, hashlib, sys\n\
                  key = open(sys.argv[1], 'rb').read()\n\
                  msg = (sys.argv[2] + '\\n' + sys.argv[3]).encode('utf-8')\n\
                  print(hmac.new(key, msg, hashlib.sha256).hexdigest())\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(key_file)
        .arg(topic)
        .arg(body)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn ms5_edge_sign_output_verifies_with_pythons_hmac() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("command.key");
    std::fs::write(&key_file, KEY).unwrap();
    let topic = format!("{PREFIX}/cmd/{BAGGER}/andon/ack");
    let cases = [
        // Body as an argument, spacing kept; issued_at added.
        (
            Some(r#"{ "request_id": "p1", "by": "jsmith", "andon_id": "a-1" }"#),
            None,
        ),
        // Body on stdin with its own issued_at, kept as sent.
        (
            None,
            Some("{\"request_id\":\"p2\",\"issued_at\":\"2026-12-01T06:00:00Z\",\"note\":\"caf\u{e9}\"}\n"),
        ),
        // The empty object.
        (Some("{}"), None),
    ];
    for (arg, stdin) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ms5-edge"));
        command
            .args(["sign", "--key-file"])
            .arg(&key_file)
            .args(["--topic", &topic])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(body) = arg {
            command.arg(body);
        }
        let mut child = command.spawn().expect("ms5-edge sign starts");
        {
            use std::io::Write;
            let mut input = child.stdin.take().expect("stdin");
            input
                .write_all(stdin.unwrap_or("").as_bytes())
                .expect("write stdin");
        }
        let out = child.wait_with_output().expect("ms5-edge sign runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let signed = String::from_utf8(out.stdout).expect("UTF-8");
        let signed = signed.trim_end_matches('\n');
        let value: Value = serde_json::from_str(signed).expect("the output is JSON");
        assert!(
            value["issued_at"].is_string(),
            "issued_at present: {signed}"
        );
        let sig = value["sig"].as_str().expect("sig present");
        // The body without exactly the `,"sig":"…"` suffix (or `"sig":"…"` in `{}`).
        let suffix = format!(r#""sig":"{sig}""#);
        let stripped = signed
            .replacen(&format!(",{suffix}"), "", 1)
            .replacen(&suffix, "", 1);
        assert_eq!(python_hmac(&key_file, &topic, &stripped), sig, "{signed}");
        if let Some(body) = arg {
            let original = body.trim_end_matches('}');
            assert!(
                stripped.starts_with(original),
                "not re-serialised: {stripped}"
            );
        }
        if let Some(body) = stdin {
            assert_eq!(stripped, body.trim_end(), "kept as sent");
        }
    }
}

/// The demo config (PLC ports that nothing listens on) with a plain `mqtt://` broker and
/// `[commands] key_file = key_file`, written next to it.
fn config_with_key(dir: &Path, key_file: &Path) -> std::path::PathBuf {
    let mut text = ms5_edge::demo::config_text(
        common::free_port(),
        common::free_port(),
        &dir.join("data").display().to_string(),
        Some("mqtt://127.0.0.1:1"),
    );
    text.push_str(&format!(
        "\n[commands]\nkey_file = \"{}\"\n",
        key_file.display()
    ));
    let path = dir.join("ms5-edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_warns_about_a_missing_or_unencrypted_key_and_run_refuses_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("command.key");
    let path = config_with_key(dir.path(), &key_file);
    let bin = env!("CARGO_BIN_EXE_ms5-edge");

    // Missing: a warning for check-config (exit 0), an error for run (exit 2, nothing started).
    let check = Command::new(bin)
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("commands.key_file") && stderr.contains("cannot read"),
        "{stderr}"
    );
    let run = Command::new(bin)
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!dir.path().join("data").exists(), "run started nothing");

    // Present, over mqtt://: accepted with the "sent unencrypted" warning.
    std::fs::write(&key_file, KEY).unwrap();
    let check = Command::new(bin)
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("sent unencrypted"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot read"), "{stderr}");

    // Too short: an error.
    std::fs::write(&key_file, &KEY[..16]).unwrap();
    let check = Command::new(bin)
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("16 bytes"), "{stderr}");
}
