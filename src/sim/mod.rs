//! Modbus TCP simulators of Bagger 1 and Basket Loader 1, for `ms5-edge demo` and the tests.
//!
//! Each machine is its own Modbus TCP server (unit id 1; 0 and 255 are answered too, as a
//! directly addressed device would; any other unit gets `GatewayTargetDevice`) serving the
//! register map of [`registers`] from the process [`Image`] of the deterministic scenario in
//! [`scenario`]. Scenario time starts when the server starts (or at an offset, see
//! [`start_at`]), and [`Override`] can freeze it or force any value for a test.
//!
//! ## Scenario timeline (one cycle is 180 s and repeats)
//!
//! Bagger 1 (ideal 120/min, runs at 110/min, every 40th unit a reject):
//!
//! | from → to (s) | running | fault words | what it exercises |
//! |---------------|---------|-------------|-------------------|
//! | 0 → 5         | yes     | –           | |
//! | 5 → 9         | no      | –           | minor stop: 4 s < `micro_stop_s` (30 s) |
//! | 9 → 60        | yes     | –           | |
//! | 60 → 97       | no      | bit 0 `FILM_BREAK` | fault trips the machine: first-out = the fault active at the stop |
//! | 97 → 100      | no      | –           | fault reset 3 s before restart; the 40 s stop is downtime |
//! | 100 → 180     | yes     | –           | |
//!
//! Basket Loader 1 (ideal 60/min, runs at 55/min, every 50th unit a reject):
//!
//! | from → to (s) | running | fault words | what it exercises |
//! |---------------|---------|-------------|-------------------|
//! | 0 → 8         | yes     | –           | |
//! | 8 → 12        | no      | –           | a stop without a fault ... |
//! | 12 → 40       | no      | bit 1 `JAM` | ... the jam appears 4 s into it: first-out = first to become active during the stop |
//! | 40 → 43       | no      | –           | the 35 s stop is downtime |
//! | 43 → 120      | yes     | –           | |
//! | 120 → 126     | no      | –           | minor stop (6 s) |
//! | 126 → 180     | yes     | –           | |
//!
//! Speed is the actual rate while running and 0 while stopped. Counts are exact:
//! `units = floor(run_ms × rate / 60 000)`, `reject = floor(units / reject_every)`,
//! `good = units − reject` (per cycle: Bagger 136 s of running, Loader 139 s). Motor
//! temperature follows a first-order thermal model (warming towards 58 / 49 °C while running,
//! cooling towards 34 / 31 °C while stopped) in its periodic steady state, plus a small ripple.
//!
//! ## Connections
//!
//! [`SimHandle::set_online`]`(false)` makes the PLC unreachable at once: every open connection
//! fails its next read or write (so the very next request after the call sees a transport
//! error), the connection tasks are cancelled, and new connections are closed as soon as they
//! are accepted. The port stays bound, so `set_online(true)` serves again immediately on the
//! same port. (A real PLC whose Modbus server is down answers like this; a pulled cable would
//! time out instead.) Dropping the [`SimHandle`] or [`SimHandle::shutdown`] closes the port and
//! every connection.

pub mod config;
pub mod registers;
pub mod scenario;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

pub use scenario::{image_at, Image, Machine, Phase, CYCLE_MS};

/// Forces parts of the image for a test; `Override::default()` follows the scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Override {
    /// Freezes scenario time at this many ms after start.
    pub elapsed_ms: Option<u64>,
    /// Forces [`Image::running`].
    pub running: Option<bool>,
    /// Forces [`Image::speed`].
    pub speed: Option<f32>,
    /// Forces [`Image::good_count`].
    pub good_count: Option<u32>,
    /// Forces [`Image::reject_count`].
    pub reject_count: Option<u32>,
    /// Forces [`Image::fault_words`].
    pub fault_words: Option<[u16; 4]>,
    /// Forces [`Image::temp_raw`].
    pub temp_raw: Option<i16>,
}

impl Override {
    /// Applies the forced fields to `image`.
    pub fn apply(&self, image: Image) -> Image {
        Image {
            running: self.running.unwrap_or(image.running),
            speed: self.speed.unwrap_or(image.speed),
            good_count: self.good_count.unwrap_or(image.good_count),
            reject_count: self.reject_count.unwrap_or(image.reject_count),
            fault_words: self.fault_words.unwrap_or(image.fault_words),
            temp_raw: self.temp_raw.unwrap_or(image.temp_raw),
        }
    }
}

/// State shared by the handle, the server task and every connection.
#[derive(Debug)]
struct Shared {
    machine: Machine,
    /// When the server started. `tokio::time::Instant`, so tests with paused time control it.
    epoch: Instant,
    /// Scenario time at `epoch`.
    offset_ms: u64,
    /// A std `Mutex`, not tokio's: held only to copy a few bytes, never across an `.await`,
    /// and read from the synchronous `Service::call`.
    overrides: Mutex<Override>,
    /// Whether the PLC is reachable; read by every connection on every read and write.
    online: AtomicBool,
    /// Set once on shutdown; closes everything for good.
    closed: AtomicBool,
    /// Requests answered (with data or an exception), for tests of what a client sends.
    requests: AtomicU64,
    /// Write requests received (all refused), for tests that nothing is ever written.
    writes: AtomicU64,
}

impl Shared {
    fn open(&self) -> bool {
        self.online.load(Ordering::SeqCst) && !self.closed.load(Ordering::SeqCst)
    }

    fn overrides(&self) -> Override {
        match self.overrides.lock() {
            Ok(o) => *o,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.overrides().elapsed_ms.unwrap_or_else(|| {
            let since = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.offset_ms.saturating_add(since)
        })
    }

    fn image(&self) -> Image {
        let o = self.overrides();
        o.apply(image_at(self.machine, self.elapsed_ms()))
    }
}

/// A running simulator. Dropping it, or [`SimHandle::shutdown`], stops the server and closes
/// all its connections.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    online: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts `machine`'s simulated PLC on `bind` (port 0 picks a free port); scenario time 0 is
/// now.
pub async fn start(machine: Machine, bind: SocketAddr) -> io::Result<SimHandle> {
    start_at(machine, bind, 0).await
}

/// Like [`start`], with scenario time starting at `elapsed_offset_ms` (e.g. 55 000 to see the
/// Bagger's film break five seconds later).
pub async fn start_at(
    machine: Machine,
    bind: SocketAddr,
    elapsed_offset_ms: u64,
) -> io::Result<SimHandle> {
    let socket = if bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted demo must get its port back while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    let listener = socket.listen(64)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        machine,
        epoch: Instant::now(),
        offset_ms: elapsed_offset_ms,
        overrides: Mutex::new(Override::default()),
        online: AtomicBool::new(true),
        closed: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        writes: AtomicU64::new(0),
    });
    let (online_tx, online_rx) = watch::channel(true);
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(serve(listener, Arc::clone(&shared), online_rx, stop_rx));
    tracing::info!(machine = machine.name(), %addr, "Modbus simulator listening");
    Ok(SimHandle {
        addr,
        shared,
        online: online_tx,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

impl SimHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The simulated machine.
    pub fn machine(&self) -> Machine {
        self.shared.machine
    }

    /// Scenario time now (frozen if an override says so).
    pub fn elapsed_ms(&self) -> u64 {
        self.shared.elapsed_ms()
    }

    /// What the server is serving right now.
    pub fn image(&self) -> Image {
        self.shared.image()
    }

    /// How many requests the server has answered so far, exceptions included.
    pub fn requests_served(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many write requests (any write function code) the server received; it refuses
    /// them all.
    pub fn writes_received(&self) -> u64 {
        self.shared.writes.load(Ordering::SeqCst)
    }

    /// Forces values (or freezes time); `Override::default()` follows the scenario again.
    pub fn set_override(&self, o: Override) {
        match self.shared.overrides.lock() {
            Ok(mut guard) => *guard = o,
            Err(poisoned) => *poisoned.into_inner() = o,
        }
    }

    /// `false`: close every connection and refuse new ones (PLC unreachable) from this call
    /// on; `true`: serve again on the same port.
    pub fn set_online(&self, online: bool) {
        self.shared.online.store(online, Ordering::SeqCst);
        // Restarts the accept loop, which cancels every connection task.
        self.online.send_replace(online);
    }

    /// Stops the server and waits for its task; the port is closed when this returns.
    pub async fn shutdown(mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::debug!(error = %e, "simulator task ended abnormally");
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The accept loop. Each change of the online state restarts `Server::serve`: dropping its
/// future cancels every connection task it spawned (tokio-modbus ties them to a cancellation
/// token guarded by the `serve` future).
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut online: watch::Receiver<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    let server = Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let shared = Arc::clone(&shared);
        async move {
            if !shared.open() {
                tracing::debug!(%peer, "simulated PLC offline: closing new connection");
                return Ok(None);
            }
            let _ = stream.set_nodelay(true);
            let service = SimService {
                shared: Arc::clone(&shared),
            };
            Ok(Some((service, Gate { stream, shared })))
        }
    };
    let on_process_error = |e: io::Error| tracing::debug!(error = %e, "simulator connection ended");
    loop {
        tokio::select! {
            result = server.serve(&on_connected, on_process_error) => {
                if let Err(e) = result {
                    // accept() failed (e.g. out of file descriptors): pause, then listen again.
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            changed = online.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = &mut stop => return,
        }
    }
}

/// Answers requests from the current image.
struct SimService {
    shared: Arc<Shared>,
}

impl Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.shared.requests.fetch_add(1, Ordering::SeqCst);
        if registers::is_write(&req.request) {
            self.shared.writes.fetch_add(1, Ordering::SeqCst);
        }
        let result = match req.slave {
            0 | 1 | 255 => registers::answer(&self.shared.image(), &req.request),
            _ => Err(ExceptionCode::GatewayTargetDevice),
        };
        std::future::ready(result)
    }
}

/// A connection that fails every read and write once the PLC goes offline, so the effect of
/// [`SimHandle::set_online`] does not wait for a task to be scheduled.
struct Gate {
    stream: TcpStream,
    shared: Arc<Shared>,
}

impl Gate {
    fn check(&self) -> io::Result<()> {
        if self.shared.open() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "simulated PLC offline",
            ))
        }
    }
}

impl AsyncRead for Gate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_override_follows_the_scenario() {
        let img = image_at(Machine::Bagger, 61_000);
        assert_eq!(Override::default().apply(img), img);
    }

    #[test]
    fn an_override_forces_only_the_fields_it_sets() {
        let img = image_at(Machine::Loader, 1_000);
        let o = Override {
            running: Some(false),
            fault_words: Some([0, 0, 0, 1]),
            ..Override::default()
        };
        let forced = o.apply(img);
        assert!(!forced.running);
        assert_eq!(forced.fault_words, [0, 0, 0, 1]);
        assert_eq!(forced.good_count, img.good_count);
        assert_eq!(forced.temp_raw, img.temp_raw);
    }

    #[tokio::test]
    async fn scenario_time_starts_at_start_plus_the_offset_and_an_override_freezes_it() {
        let sim = start_at(Machine::Bagger, ([127, 0, 0, 1], 0).into(), 59_000)
            .await
            .unwrap();
        let elapsed = sim.elapsed_ms();
        assert!((59_000..69_000).contains(&elapsed), "{elapsed}");
        sim.set_override(Override {
            elapsed_ms: Some(60_000),
            ..Override::default()
        });
        assert_eq!(sim.elapsed_ms(), 60_000);
        assert_eq!(sim.image(), image_at(Machine::Bagger, 60_000));
        assert_eq!(sim.image().fault_words, scenario::FILM_BREAK);
        sim.shutdown().await;
    }
}
