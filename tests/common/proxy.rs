//! A fault-injecting TCP proxy for the acquisition tests: sits between a poller and a PLC
//! (simulator or peer) on loopback and, on command, delays, drops, truncates or corrupts the
//! PLC's replies, or resets every connection.
//!
//! Faults apply to the reply direction (PLC → gateway), where a real network or a sick PLC
//! hurts the gateway; requests are always forwarded as they are. The proxy knows no protocol:
//! "corrupt" flips the first 8 bytes of each reply chunk, which is the Modbus MBAP header or
//! the EtherNet/IP encapsulation header — the framing the client must not trust blindly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything unchanged.
    Pass,
    /// Hold each reply chunk this long before forwarding it.
    Delay(Duration),
    /// Swallow replies: the request goes out, nothing comes back.
    Drop,
    /// Forward the first half of a reply chunk, then close the connection.
    Truncate,
    /// Flip the bits of the first 8 bytes of each reply chunk.
    Corrupt,
    /// Reset every open connection (RST) and every new one at once.
    Reset,
}

struct Shared {
    fault: Mutex<Fault>,
    accepted: AtomicU64,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running proxy; dropping it stops it.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    changed: watch::Sender<Fault>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::Pass),
            accepted: AtomicU64::new(0),
        });
        let (changed, _) = watch::channel(Fault::Pass);
        let task = {
            let shared = Arc::clone(&shared);
            let changed = changed.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    let shared = Arc::clone(&shared);
                    let rx = changed.subscribe();
                    tokio::spawn(connection(client, upstream, shared, rx));
                }
            })
        };
        Proxy {
            addr,
            shared,
            changed,
            task,
        }
    }

    /// Where the poller should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Switches the fault; takes effect on the next reply chunk (and at once for `Reset`).
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
        self.changed.send_replace(fault);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes with RST rather than FIN: what a rebooting PLC or a firewall does.
// `set_linger` is deprecated because a *non-zero* linger blocks the thread on drop; a zero
// linger never blocks (the kernel discards the buffer and sends RST at once).
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut changed: watch::Receiver<Fault>,
) {
    if shared.fault() == Fault::Reset {
        reset(client);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let mut request = [0u8; 4096];
    let mut reply = [0u8; 4096];
    loop {
        tokio::select! {
            n = client_rx.read(&mut request) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => if server_tx.write_all(&request[..n]).await.is_err() { break },
            },
            n = server_rx.read(&mut reply) => {
                let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                match shared.fault() {
                    Fault::Pass => {}
                    Fault::Delay(d) => tokio::time::sleep(d).await,
                    Fault::Drop => continue,
                    Fault::Truncate => {
                        let _ = client_tx.write_all(&reply[..n / 2]).await;
                        break;
                    }
                    Fault::Corrupt => {
                        for b in reply.iter_mut().take(n.min(8)) {
                            *b = !*b;
                        }
                    }
                    Fault::Reset => break,
                }
                if client_tx.write_all(&reply[..n]).await.is_err() { break }
            },
            _ = changed.changed() => {
                if *changed.borrow() == Fault::Reset {
                    if let Ok(client) = client_rx.reunite(client_tx) {
                        reset(client);
                    }
                    return;
                }
            }
        }
    }
}
