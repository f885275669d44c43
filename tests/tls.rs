//! `mqtts://` against a real mosquitto with certificates made in the test: server-only TLS,
//! mutual TLS, a certificate from the wrong CA, and username + `password_file`.
//!
//! Delivery is judged from the gateway's own database: the outbox drains only on PUBACKs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test may panic

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::line::{config_text, hold_running, line, Line};
use common::pki::{self, Pki};
use common::{free_port, wait_for, Broker, DaemonProcess};
use ms5_edge::store::{ReadOnly, DB_FILE};

/// (highest seq ever committed, rows waiting)
fn outbox(data: &Path) -> Option<(i64, u64)> {
    let snap = ReadOnly::open(data).ok()?.snapshot().ok()?;
    let db = rusqlite::Connection::open_with_flags(
        data.join(DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    let committed: i64 = db
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
            [],
            |r| r.get(0),
        )
        .ok()?;
    Some((committed, snap.outbox_depth))
}

async fn delivered(data: &Path) {
    wait_for(
        "the outbox to drain through the TLS connection",
        Duration::from_secs(30),
        || outbox(data).is_some_and(|(c, depth)| c >= 3 && depth == 0),
    )
    .await;
}

/// Waits until at least 3 events are committed and checks that none was acknowledged.
async fn undelivered(data: &Path) {
    wait_for("a backlog", Duration::from_secs(30), || {
        outbox(data).is_some_and(|(c, depth)| c >= 3 && depth as i64 == c)
    })
    .await;
}

struct Setup {
    dir: tempfile::TempDir,
    line: Line,
    tls_port: u16,
}

async fn setup() -> Setup {
    let line = line().await;
    line.bagger.set_override(hold_running(true));
    Setup {
        dir: tempfile::tempdir().unwrap(),
        line,
        tls_port: free_port(),
    }
}

impl Setup {
    fn daemon(&self, name: &str, mqtt_extra: &str) -> (DaemonProcess, std::path::PathBuf) {
        let data = self.dir.path().join(format!("data-{name}"));
        let url = format!("mqtts://127.0.0.1:{}", self.tls_port);
        let text = config_text(
            &self.line,
            &data,
            Some(&url),
            &format!("client_id = \"gw-{name}\"\n{mqtt_extra}"),
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        (DaemonProcess::start(&path, &log), data)
    }
}

fn ca_line(pki: &Pki) -> String {
    format!("ca_file = \"{}\"\n", pki.ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_tls_with_the_configured_ca_delivers_the_outbox() {
    let s = setup().await;
    let pki = pki::generate(&s.dir.path().join("pki"), "plant");
    let _broker = Broker::start_with(
        &s.dir.path().join("broker"),
        &pki::listener(&pki, s.tls_port, false),
    )
    .await;
    let (mut daemon, data) = s.daemon("tls", &ca_line(&pki));
    delivered(&data).await;
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_delivers_with_a_client_certificate_and_is_refused_without_one() {
    let s = setup().await;
    let pki = pki::generate(&s.dir.path().join("pki"), "plant");
    let _broker = Broker::start_with(
        &s.dir.path().join("broker"),
        &pki::listener(&pki, s.tls_port, true),
    )
    .await;
    let client = format!(
        "{}client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        ca_line(&pki),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let (mut with_cert, data) = s.daemon("mtls", &client);
    delivered(&data).await;
    assert!(with_cert.terminate().success());

    let (mut without, data) = s.daemon("no-cert", &ca_line(&pki));
    undelivered(&data).await;
    wait_for("the refusal in the log", Duration::from_secs(20), || {
        without
            .log_text()
            .contains("MQTT connection lost or refused")
    })
    .await;
    let log = without.log_text();
    assert!(
        log.contains("MQTT connection lost or refused"),
        "the refusal is logged:\n{log}"
    );
    assert!(
        without.child.try_wait().unwrap().is_none(),
        "the daemon keeps running"
    );
    assert!(without.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused_with_a_tls_error() {
    let s = setup().await;
    let plant = pki::generate(&s.dir.path().join("pki"), "plant");
    let rogue = pki::generate(&s.dir.path().join("rogue"), "rogue");
    // The broker presents a certificate of the rogue CA; the gateway trusts the plant CA.
    let _broker = Broker::start_with(
        &s.dir.path().join("broker"),
        &pki::listener(&rogue, s.tls_port, false),
    )
    .await;
    let (mut daemon, data) = s.daemon("wrong-ca", &ca_line(&plant));
    undelivered(&data).await;
    // The backlog can build before the first TLS attempt has failed: wait for the line.
    wait_for("the TLS error in the log", Duration::from_secs(20), || {
        daemon
            .log_text()
            .contains("TLS handshake with the broker failed")
    })
    .await;
    let log = daemon.log_text();
    assert!(
        log.contains("TLS handshake with the broker failed"),
        "a clear TLS error:\n{log}"
    );
    assert!(daemon.terminate().success());
}

fn password_file(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join("mosquitto.passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&path)
        .args([user, password])
        .status()
        .expect("mosquitto_passwd (from the mosquitto package)");
    assert!(status.success());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_password_is_accepted_and_a_wrong_one_is_refused_clearly_and_retried() {
    let s = setup().await;
    let pki = pki::generate(&s.dir.path().join("pki"), "plant");
    let broker_dir = s.dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let passwd = password_file(&broker_dir, "gw1", "correct horse");
    let broker = Broker::start_with(
        &broker_dir,
        &format!(
            "allow_anonymous false\npassword_file {}\n{}",
            passwd.display(),
            pki::listener(&pki, s.tls_port, false)
        ),
    )
    .await;

    let secret = |name: &str, text: &str, mode: u32| {
        let p = s.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        p
    };
    let good = secret("good.pw", "correct horse\n", 0o600);
    let (mut ok, data) = s.daemon(
        "good-pw",
        &format!(
            "{}username = \"gw1\"\npassword_file = \"{}\"\n",
            ca_line(&pki),
            good.display()
        ),
    );
    delivered(&data).await;
    assert!(ok.terminate().success());
    assert!(
        !ok.log_text().contains("correct horse"),
        "the password is never logged"
    );

    // A wrong password, in a file others can read.
    let bad = secret("bad.pw", "battery staple\n", 0o644);
    let (mut refused, data) = s.daemon(
        "bad-pw",
        &format!(
            "{}username = \"gw1\"\npassword_file = \"{}\"\n",
            ca_line(&pki),
            bad.display()
        ),
    );
    undelivered(&data).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while broker.log_text().matches("not authorised").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker saw fewer than two refused attempts:\n{}",
            broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = refused.log_text();
    assert!(
        log.contains("bad user name or password"),
        "a clear log line:\n{log}"
    );
    assert_eq!(
        log.matches("bad user name or password").count(),
        1,
        "logged once per change, not once per retry:\n{log}"
    );
    assert!(
        log.contains("readable by group or others"),
        "a warning about the file mode:\n{log}"
    );
    assert!(
        !log.contains("battery staple"),
        "the password is never logged"
    );
    assert!(
        refused.child.try_wait().unwrap().is_none(),
        "still running, still retrying"
    );
    assert!(refused.terminate().success());
}
