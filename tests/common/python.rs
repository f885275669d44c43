//! Independent protocol peers (pymodbus, cpppo) run from the venv `scripts/test` installs in
//! `target/peers-venv`, each on a free loopback port, each killed when its handle drops.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The venv's python; panics with how to install it when it is missing.
pub fn peers_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peers-venv/bin/python");
    assert!(
        python.exists(),
        "the protocol peers are not installed ({} is missing). Run scripts/test, which creates \
         the venv with pinned pymodbus and cpppo, or by hand: python3 -m venv target/peers-venv \
         && target/peers-venv/bin/pip install pymodbus==3.16.1 cpppo==5.2.5 asyncua==2.1.0",
        python.display()
    );
    python
}

/// A running peer process.
pub struct Peer {
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Peer {
    /// Starts `tests/peers/<script> <port> <args…>` and waits (up to 30 s) until the port
    /// accepts connections; fails with the peer's output if it exits first.
    pub fn start(script: &str, args: &[String]) -> Peer {
        Peer::start_on(super::free_port(), script, args)
    }

    /// [`Peer::start`] on a given port (a peer restarted where the client expects it).
    pub fn start_on(port: u16, script: &str, args: &[String]) -> Peer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let log = std::env::temp_dir().join(format!("ms5-peer-{script}-{port}.log"));
        let out = std::fs::File::create(&log).expect("peer log file");
        let err = out.try_clone().expect("peer log file");
        let child = Command::new(peers_python())
            .arg(dir.join("tests/peers").join(script))
            .arg(port.to_string())
            .args(args)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start the peer");
        let mut peer = Peer { port, child, log };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return peer;
            }
            if let Ok(Some(status)) = peer.child.try_wait() {
                panic!(
                    "peer {script} exited ({status}) before listening:\n{}",
                    peer.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "peer {script} did not listen on {port} within 30 s:\n{}",
                peer.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What the peer printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
