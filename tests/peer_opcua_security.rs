//! OPC UA security against python asyncua (`tests/peers/opcua_server.py --secure`):
//! Basic256Sha256, Aes128Sha256RsaOaep and Aes256Sha256RsaPss endpoints with a user name, the
//! server certificate pinned, trusted on first use, or rejected — at the driver and end to end
//! through the daemon's reporting (`status`, `P/status`).
//!
//! Needs the peers venv (`scripts/test` installs asyncua into it).

#![cfg(feature = "opcua")] // the driver exists only with the (default) `opcua` feature
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::time::{Duration, Instant};

use ms5_edge::acquire::opcua::OpcUaPoller;
use ms5_edge::acquire::{Poller, Value};
use ms5_edge::config::{DataType, Protocol, SecurityMode, SecurityPolicy, TrustServer};

use common::line::PREFIX;
use common::opcua::*;
use common::rig::{Rig, RigOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic256sha256_with_a_user_an_unknown_server_certificate_is_rejected_then_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = dir.path().join("server-pki");
    let peer = server(
        dir.path(),
        None,
        &[
            "--secure",
            server_pki.to_str().unwrap(),
            "--user",
            "ms5:s3cret",
        ],
    );
    let password = dir.path().join("opcua.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let pki = dir.path().join("pki");
    let mut poller = OpcUaPoller::new(
        &secure_plc(peer.port, &pki, &password, TrustServer::Pinned),
        &[equipment(DataType::F32)],
    );

    // Pinned, the server's certificate not in trusted/: refused, saved under rejected/.
    let e = poller
        .poll()
        .await
        .expect_err("an untrusted server is refused");
    assert!(!poller.connected());
    let rejected = files_in(&pki.join("rejected"));
    assert_eq!(rejected.len(), 1, "{e}: {rejected:?}");
    assert!(e.to_string().contains("rejected"), "{e}");
    assert!(files_in(&pki.join("trusted")).is_empty());

    // The engineer moves it to trusted/: the next connect reads the store again.
    let name = rejected[0].file_name().unwrap().to_owned();
    std::fs::rename(&rejected[0], pki.join("trusted").join(&name)).unwrap();
    let samples = poller.poll().await.expect("trusted now");
    let s = &samples[0].signals;
    assert_eq!(s["good_count"], good(Value::UInt(123_456)));
    assert_eq!(s["speed"], good(Value::Float(87.5)));
    assert_eq!(writes(&peer), 0);

    // A wrong password is refused (not a crash, not a retry storm: one transport error).
    std::fs::write(&password, "wrong\n").unwrap();
    let mut wrong = OpcUaPoller::new(
        &secure_plc(peer.port, &pki, &password, TrustServer::Pinned),
        &[equipment(DataType::F32)],
    );
    wrong.poll().await.expect_err("a wrong password is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes128_oaep_sign_and_encrypt_and_aes256_pss_sign_read_like_basic256sha256() {
    let dir = tempfile::tempdir().unwrap();
    let peer = server(
        dir.path(),
        None,
        &[
            "--secure",
            dir.path().join("server-pki").to_str().unwrap(),
            "--user",
            "ms5:s3cret",
            "--policies",
            "Aes128Sha256RsaOaep_SignAndEncrypt,Aes256Sha256RsaPss_Sign",
        ],
    );
    let password = dir.path().join("opcua.password");
    std::fs::write(&password, "s3cret").unwrap();
    let pki = dir.path().join("pki");
    for (policy, mode) in [
        (
            SecurityPolicy::Aes128Sha256RsaOaep,
            SecurityMode::SignAndEncrypt,
        ),
        (SecurityPolicy::Aes256Sha256RsaPss, SecurityMode::Sign),
        // Offered by neither endpoint: refused by name, not a crash.
        (SecurityPolicy::Basic256Sha256, SecurityMode::SignAndEncrypt),
    ] {
        let mut p = secure_plc(peer.port, &pki, &password, TrustServer::FirstUse);
        if let Protocol::OpcUa(o) = &mut p.protocol {
            o.security_policy = policy;
            o.security_mode = mode;
        }
        let mut poller = OpcUaPoller::new(&p, &[equipment(DataType::F32)]);
        let r = poller.poll().await;
        if policy == SecurityPolicy::Basic256Sha256 {
            let e = r.expect_err("no such endpoint");
            assert!(e.to_string().contains("offers no endpoint"), "{e}");
            continue;
        }
        let samples = r.unwrap_or_else(|e| panic!("{policy} / {mode}: {e}"));
        let s = &samples[0].signals;
        assert_eq!(s["good_count"], good(Value::UInt(123_456)), "{policy}");
        assert_eq!(s["speed"], good(Value::Float(87.5)), "{policy}");
        assert_eq!(s["energy"], good(Value::Float(1234.5678)), "{policy}");
    }
    assert_eq!(
        files_in(&pki.join("trusted")).len(),
        1,
        "one server certificate"
    );
    assert_eq!(writes(&peer), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_trusts_the_first_server_certificate_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("opcua.password");
    std::fs::write(&password, "s3cret").unwrap();
    let pki = dir.path().join("pki");
    let first = server(
        dir.path(),
        None,
        &[
            "--secure",
            dir.path().join("server-a").to_str().unwrap(),
            "--user",
            "ms5:s3cret",
        ],
    );
    let port = first.port;
    let plc = secure_plc(port, &pki, &password, TrustServer::FirstUse);
    let mut poller = OpcUaPoller::new(&plc, &[equipment(DataType::F32)]);
    let samples = poller.poll().await.expect("first use: trusted");
    assert_eq!(samples[0].signals["running"], good(Value::Bool(true)));
    assert_eq!(files_in(&pki.join("trusted")).len(), 1);
    drop(poller);
    drop(first);

    // Another server (a new certificate) at the same address: refused and saved.
    let _second = server(
        dir.path(),
        Some(port),
        &[
            "--secure",
            dir.path().join("server-b").to_str().unwrap(),
            "--user",
            "ms5:s3cret",
        ],
    );
    let mut poller = OpcUaPoller::new(&plc, &[equipment(DataType::F32)]);
    poller
        .poll()
        .await
        .expect_err("a different certificate is refused");
    assert_eq!(files_in(&pki.join("trusted")).len(), 1);
    assert_eq!(files_in(&pki.join("rejected")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_server_certificate_is_reported_in_status_and_trusting_it_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = dir.path().join("server-pki");
    let peer = server(
        dir.path(),
        None,
        &[
            "--secure",
            server_pki.to_str().unwrap(),
            "--user",
            "ms5:s3cret",
        ],
    );
    let port = peer.port;
    let password = dir.path().join("opcua.password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let pki = dir.path().join("pki");
    let security = format!(
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n\
         username = \"ms5\"\npassword_file = \"{}\"\n",
        password.display()
    );
    let edit_pki = pki.clone();
    let rig = Rig::start(RigOptions {
        dir: Some(dir),
        config_edit: Some(Box::new(move |text, _| {
            opcua_config(text, port, &edit_pki, &security)
        })),
        ..RigOptions::default()
    })
    .await;

    // Pinned (the default) and trusted/ empty: refused; the PLC goes offline with a last
    // error that names the saved certificate and the move that trusts it.
    let trusted = pki.join("trusted");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (saved, error) = loop {
        let c = pal(&rig);
        let rejected = files_in(&pki.join("rejected"));
        if let (true, [cert], Some(e)) = (c.offline, rejected.as_slice(), &c.last_error) {
            if e.contains(&cert.display().to_string()) {
                break (cert.clone(), e.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no offline PLC naming the rejected certificate within 30 s: {c:?}, rejected/ {rejected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains("not trusted"), "{error}");
    assert!(
        error.contains(&format!("move it to {}/", trusted.display())),
        "{error}"
    );
    let saved_text = saved.display().to_string();
    rig.sub
        .wait(
            "a P/status naming the rejected certificate",
            Duration::from_secs(30),
            |m| {
                m.iter()
                    .filter(|r| r.topic == format!("{PREFIX}/status"))
                    .any(|r| {
                        r.payload["health"]["plcs"]["pal"]["counters"]["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains(&saved_text))
                    })
            },
        )
        .await;
    // `ms5-edge status` reads the same from the store (written at least once a second).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ms5-edge"))
            .args(["status", "--json", "-c"])
            .arg(&rig.config_path)
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let p = &status["plcs"]["pal"];
        if p["offline"] == true
            && p["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&saved_text))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`status --json` does not name the rejected certificate: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The retries did not pile up copies of it.
    assert_eq!(files_in(&pki.join("rejected")), vec![saved.clone()]);

    // The engineer moves it to trusted/: the daemon connects at its next retry, no restart.
    std::fs::rename(&saved, trusted.join(saved.file_name().unwrap())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = pal(&rig);
        if c.consecutive_failures == 0 && c.last_error.is_none() && !c.offline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not connected within 30 s of trusting the certificate: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.sub
        .wait(
            "good telemetry once trusted",
            Duration::from_secs(10),
            |m| {
                telemetry(m).iter().any(|d| {
                    d["quality"]["good_count"] == "good" && d["values"]["good_count"] == 123_456
                })
            },
        )
        .await;
    assert_eq!(writes(&peer), 0, "the daemon wrote:\n{}", peer.output());
}
