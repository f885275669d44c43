//! Modbus RTU buses (SPEC §9): one task per serial `device` owns the port; every PLC on that
//! device sends its requests through a [`BusHandle`], and the task puts them on the wire one
//! at a time.
//!
//! The read path (plan, coalescing, decode, exception handling) is Modbus TCP's
//! ([`super::modbus::ModbusPoller`]); only how a request reaches the unit differs. Each PLC
//! keeps its own task and absolute schedule (`run_plc`); the bus only serialises.
//!
//! ## What the bus does
//!
//! - **One request on the wire at a time.** Jobs are served in arrival order (FIFO over all the
//!   PLCs on the bus). A job is sent only after the line has been quiet for the inter-frame gap
//!   ([`frame_gap`]: 3.5 character times, 1.75 ms above 19 200 baud, as the Modbus over serial
//!   line specification asks), counted from the end of the previous exchange.
//! - **A dead unit costs the others only its timeout.** Each job carries its PLC's
//!   `timeout_ms`, counted from the moment it is sent; an unanswered request holds the bus for
//!   exactly that long. There is no retry here (and none in a poll): the PLC's task backs off,
//!   and ticks in backoff send nothing, so a dead unit cannot starve the bus.
//! - **Errors.** Silence is a timeout. A reply with a bad CRC is discarded by tokio-modbus's
//!   decoder, which then waits for a valid frame, so it too ends as a timeout; both are
//!   transport errors, like TCP's. An I/O error on the port closes it; the next job reopens it
//!   (a USB adapter unplugged and plugged back in recovers by itself). A timeout keeps the
//!   port open: the other units on the bus are not disturbed.
//! - **A late answer is never taken for the next one.** RTU frames carry no transaction id: a
//!   unit that answers after its timeout puts on the line a frame the next request would read
//!   as its own (same unit, function and length: wrong values, silently). After a timeout or
//!   an answer that does not match its request, the next job first drops the framing state
//!   and drains the port until the line has been quiet for the inter-frame gap (at most the
//!   job's timeout), as libmodbus flushes after an error. An answer later still than that is
//!   indistinguishable from a real one; the unit's timeout must cover its real answer time.
//! - **RS-485.** With `rs485 = true` the port is switched to the kernel's RS-485 mode
//!   (`TIOCSRS485`, RTS high while sending) through the `serial2` crate; a UART that refuses it
//!   gets one warning per open, and the bus runs on without it (USB RS-485 adapters switch
//!   their driver themselves and need no kernel mode).
//!
//! Invariants: never two requests outstanding on one port; a job whose PLC gave up waiting
//! (its poll was cancelled) is never sent; only the read function codes the poller builds
//! are sent (the bus adds none of its own); after a lost exchange nothing already on the line
//! is read as the next answer.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use crate::config::{Parity, SerialBus};

/// Why a call on a link got no answer.
#[derive(Debug)]
pub enum CallError {
    /// No (valid) answer within the timeout.
    TimedOut,
    /// The request failed on its way (I/O error, malformed or mismatched answer).
    Failed(tokio_modbus::Error),
    /// The port could not be opened, or the bus is gone.
    Port(String),
}

/// What one request on a link returns: an answer, a device exception, or no answer.
pub type CallResult = Result<Result<Response, ExceptionCode>, CallError>;

/// Anything a Modbus RTU client can run on: a serial port, or a test's in-memory pipe.
pub trait Port: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Port for T {}

/// Opens the bus's port (again after an I/O error).
pub type Opener = Box<dyn FnMut() -> io::Result<Box<dyn Port>> + Send>;

/// The open port, shared by the Modbus framing that runs the exchanges and the bus task, which
/// drains it after a lost exchange ([`drain`]). Only the bus task ever uses it, one at a time:
/// the lock is never contended.
#[derive(Clone)]
struct SharedPort(Arc<Mutex<Box<dyn Port>>>);

impl SharedPort {
    fn new(port: Box<dyn Port>) -> SharedPort {
        SharedPort(Arc::new(Mutex::new(port)))
    }

    fn with<R>(&self, f: impl FnOnce(Pin<&mut dyn Port>) -> R) -> R {
        let mut port = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(Pin::new(&mut **port))
    }
}

impl AsyncRead for SharedPort {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|p| p.poll_read(cx, buf))
    }
}

impl AsyncWrite for SharedPort {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|p| p.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.with(|p| p.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.with(|p| p.poll_shutdown(cx))
    }
}

/// Reads and discards what the line still carries until it has been quiet for `gap`, for at
/// most `limit`. Returns the number of bytes thrown away.
async fn drain(port: &mut SharedPort, gap: Duration, limit: Duration) -> io::Result<usize> {
    let give_up = Instant::now() + limit;
    let mut buf = [0u8; 256];
    let mut discarded = 0;
    loop {
        let quiet_until = (Instant::now() + gap).min(give_up);
        match tokio::time::timeout_at(quiet_until, port.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => return Ok(discarded),
            Ok(Ok(n)) => discarded += n,
            Ok(Err(e)) => return Err(e),
        }
        if Instant::now() >= give_up {
            return Ok(discarded);
        }
    }
}

struct Job {
    unit: u8,
    request: Request<'static>,
    timeout: Duration,
    reply: oneshot::Sender<CallResult>,
}

/// A PLC's way onto its bus; cheap to clone. The bus task ends when the last handle drops.
#[derive(Clone)]
pub struct BusHandle {
    tx: mpsc::Sender<Job>,
    device: String,
}

impl BusHandle {
    /// The bus's device path.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Sends `request` to `unit` when the bus is free; `timeout` counts from the moment it is
    /// on the wire.
    pub async fn call(&self, unit: u8, request: Request<'static>, timeout: Duration) -> CallResult {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            unit,
            request,
            timeout,
            reply,
        };
        let gone = || CallError::Port(format!("the bus task of {} has stopped", self.device));
        self.tx.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The quiet time the line needs between two frames: 3.5 character times, fixed at 1.75 ms
/// above 19 200 baud (Modbus over serial line, §2.5.1.1).
pub fn frame_gap(bus: &SerialBus) -> Duration {
    if bus.baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        let us = 3_500_000u64 * u64::from(bus.bits_per_char()) / u64::from(bus.baud.max(1));
        Duration::from_micros(us)
    }
}

/// Starts the task owning the serial port `device`.
pub fn spawn_serial(device: &str, bus: SerialBus) -> BusHandle {
    let path = device.to_string();
    let opener: Opener =
        Box::new(move || open_serial(&path, &bus).map(|port| Box::new(port) as Box<dyn Port>));
    spawn(device, bus, opener)
}

/// Starts a bus task on whatever `open` returns (tests use in-memory pipes).
pub fn spawn(device: &str, bus: SerialBus, open: Opener) -> BusHandle {
    // Room for one outstanding job per PLC and then some: senders wait, never drop.
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run(device.to_string(), frame_gap(&bus), open, rx));
    BusHandle {
        tx,
        device: device.to_string(),
    }
}

async fn run(device: String, gap: Duration, mut open: Opener, mut jobs: mpsc::Receiver<Job>) {
    // The open port and the Modbus framing on it.
    let mut link: Option<(SharedPort, Context)> = None;
    // When the line last went quiet (end of the last exchange).
    let mut quiet_since = Instant::now();
    let mut open_error: Option<String> = None;
    // The last exchange was lost (timeout, or an answer that was not its own): what is on
    // the line may be a late answer, and the framing may hold part of one.
    let mut resync = false;
    while let Some(job) = jobs.recv().await {
        if job.reply.is_closed() {
            continue; // its poll was cancelled: do not put it on the wire
        }
        if link.is_none() {
            match open() {
                Ok(port) => {
                    if open_error.take().is_some() {
                        tracing::info!(%device, "serial port open again");
                    }
                    tracing::debug!(%device, "serial port open");
                    let port = SharedPort::new(port);
                    let ctx =
                        tokio_modbus::client::rtu::attach_slave(port.clone(), Slave(job.unit));
                    link = Some((port, ctx));
                    quiet_since = Instant::now();
                    resync = false;
                }
                Err(e) => {
                    let message = format!("open {device}: {e}");
                    if open_error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(%device, error = %e, "serial port cannot be opened");
                    }
                    open_error = Some(message.clone());
                    let _ = job.reply.send(Err(CallError::Port(message)));
                    continue;
                }
            }
        }
        let Some((port, client)) = link.as_mut() else {
            continue;
        };
        // After a lost exchange: drain the line, then fresh framing (the old one may hold the
        // first bytes of the late answer). A port that fails while draining fails the job.
        let drained = if std::mem::take(&mut resync) {
            drain(port, gap, job.timeout).await.map(|n| {
                if n > 0 {
                    tracing::debug!(%device, bytes = n, "discarded a late answer before the next request");
                }
                *client = tokio_modbus::client::rtu::attach_slave(port.clone(), Slave(job.unit));
                quiet_since = Instant::now();
            })
        } else {
            Ok(())
        };
        let result = match drained {
            Err(e) => Err(CallError::Failed(tokio_modbus::Error::Transport(e))),
            Ok(()) => {
                tokio::time::sleep_until(quiet_since + gap).await;
                client.set_slave(Slave(job.unit));
                match tokio::time::timeout(job.timeout, client.call(job.request)).await {
                    Err(_) => Err(CallError::TimedOut),
                    Ok(Err(e)) => Err(CallError::Failed(e)),
                    Ok(Ok(answer)) => Ok(answer),
                }
            }
        };
        quiet_since = Instant::now();
        match &result {
            Err(CallError::Failed(tokio_modbus::Error::Transport(e))) => {
                tracing::debug!(%device, error = %e, "closing the serial port after an I/O error");
                link = None;
            }
            Err(CallError::TimedOut | CallError::Failed(_)) => resync = true,
            Err(CallError::Port(_)) | Ok(_) => {}
        }
        let _ = job.reply.send(result);
    }
}

/// Opens and configures a serial port; switches on kernel RS-485 mode when asked.
fn open_serial(device: &str, bus: &SerialBus) -> io::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt as _;
    let builder = tokio_serial::new(device, bus.baud)
        .parity(match bus.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(if bus.data_bits == 7 {
            tokio_serial::DataBits::Seven
        } else {
            tokio_serial::DataBits::Eight
        })
        .stop_bits(if bus.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(tokio_serial::FlowControl::None);
    if bus.rs485 {
        // Before tokio-serial's open, which takes the port exclusively (TIOCEXCL); the kernel
        // keeps a port's RS-485 settings across close and re-applies them at open.
        let set = serial2::SerialPort::open(device, serial2::KeepSettings).and_then(|p| {
            let mut conf = serial2::rs4xx::Rs485Config::new();
            conf.set_full_duplex(false); // half duplex: no receive while sending
            p.set_rs4xx_mode(conf) // RS-485 on, RTS high while sending
        });
        match set {
            Ok(()) => tracing::info!(%device, "kernel RS-485 mode on (RTS while sending)"),
            Err(e) => tracing::warn!(
                %device,
                error = %e,
                "rs485 = true but this UART refuses kernel RS-485 mode (TIOCSRS485); running \
                 without it: the adapter must switch its line driver itself (USB RS-485 \
                 adapters do), or fix the UART's device tree / driver"
            ),
        }
    }
    let port = builder.open_native_async().map_err(io::Error::from)?;
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn bus(baud: u32) -> SerialBus {
        SerialBus {
            baud,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
            rs485: false,
        }
    }

    #[test]
    fn the_frame_gap_is_three_and_a_half_characters_then_fixed() {
        // 11 bits a character at 19 200 baud: 3.5 × 11 / 19200 s ≈ 2.005 ms.
        assert_eq!(frame_gap(&bus(19_200)), Duration::from_micros(2005));
        assert_eq!(frame_gap(&bus(9600)), Duration::from_micros(4010));
        assert_eq!(frame_gap(&bus(115_200)), Duration::from_micros(1750));
    }

    fn crc(data: &[u8]) -> [u8; 2] {
        let mut crc: u16 = 0xFFFF;
        for &b in data {
            crc ^= u16::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xA001
                } else {
                    crc >> 1
                };
            }
        }
        crc.to_le_bytes()
    }

    /// A bus on an in-memory pipe whose far end answers with `reply(request bytes)`.
    fn piped(reply: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> BusHandle {
        let (near, mut far) = tokio::io::duplex(256);
        let mut near = Some(near);
        tokio::spawn(async move {
            let mut buf = [0u8; 8];
            while far.read_exact(&mut buf).await.is_ok() {
                if let Some(answer) = reply(&buf) {
                    if far.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            }
        });
        let open: Opener = Box::new(move || {
            near.take()
                .map(|p| Box::new(p) as Box<dyn Port>)
                .ok_or_else(|| io::Error::other("pipe already used"))
        });
        spawn("/dev/test", bus(19_200), open)
    }

    fn answer(unit: u8, value: u16, corrupt: bool) -> Vec<u8> {
        let mut frame = vec![unit, 0x03, 2];
        frame.extend(value.to_be_bytes());
        let mut c = crc(&frame);
        if corrupt {
            c[0] ^= 0xFF;
        }
        frame.extend(c);
        frame
    }

    #[tokio::test]
    async fn a_good_reply_is_an_answer_and_a_bad_crc_a_timeout() {
        let bus = piped(|req| match req[0] {
            1 => Some(answer(1, 0x1234, false)),
            2 => Some(answer(2, 0x1234, true)),
            _ => None,
        });
        let timeout = Duration::from_millis(100);
        let read = Request::ReadHoldingRegisters(0, 1);
        match bus.call(1, read.clone(), timeout).await {
            Ok(Ok(Response::ReadHoldingRegisters(w))) => assert_eq!(w, vec![0x1234]),
            other => panic!("unit 1: {other:?}"),
        }
        assert!(matches!(
            bus.call(2, read.clone(), timeout).await,
            Err(CallError::TimedOut)
        ));
        assert!(matches!(
            bus.call(3, read.clone(), timeout).await,
            Err(CallError::TimedOut)
        ));
        // The port stayed usable for the healthy unit.
        assert!(matches!(bus.call(1, read, timeout).await, Ok(Ok(_))));
    }

    #[tokio::test]
    async fn an_exception_from_a_unit_is_a_device_answer_not_a_transport_error() {
        let bus = piped(|req| {
            let mut frame = vec![req[0], 0x83, 0x02]; // illegal data address
            frame.extend(crc(&frame));
            Some(frame)
        });
        let r = bus
            .call(
                5,
                Request::ReadHoldingRegisters(9000, 1),
                Duration::from_millis(100),
            )
            .await;
        assert!(
            matches!(r, Ok(Err(ExceptionCode::IllegalDataAddress))),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_late_answer_is_discarded_not_read_as_the_next_requests() {
        let (near, mut far) = tokio::io::duplex(256);
        let (late_sent, late_on_line) = oneshot::channel();
        tokio::spawn(async move {
            let mut request = [0u8; 8];
            // The first request is answered after the master gave up on it …
            far.read_exact(&mut request).await.expect("first request");
            tokio::time::sleep(Duration::from_millis(60)).await;
            far.write_all(&answer(1, 0xAAAA, false))
                .await
                .expect("late answer");
            let _ = late_sent.send(());
            // … the second at once, with other values.
            far.read_exact(&mut request).await.expect("second request");
            far.write_all(&answer(1, 0xBBBB, false))
                .await
                .expect("answer");
            // Keep the line open until the master is done.
            let _ = far.read(&mut request).await;
        });
        let mut near = Some(near);
        let open: Opener = Box::new(move || {
            near.take()
                .map(|p| Box::new(p) as Box<dyn Port>)
                .ok_or_else(|| io::Error::other("pipe already used"))
        });
        let bus = spawn("/dev/test", bus(19_200), open);
        let read = Request::ReadHoldingRegisters(0, 1);
        let first = bus.call(1, read.clone(), Duration::from_millis(30)).await;
        assert!(matches!(first, Err(CallError::TimedOut)), "{first:?}");
        late_on_line.await.expect("the late answer was written");
        // Same unit, function and length: only draining tells the two answers apart.
        match bus.call(1, read, Duration::from_millis(500)).await {
            Ok(Ok(Response::ReadHoldingRegisters(w))) => assert_eq!(w, vec![0xBBBB]),
            other => panic!("second request: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_port_that_cannot_open_is_a_port_error() {
        let open: Opener = Box::new(|| Err(io::Error::from(io::ErrorKind::NotFound)));
        let bus = spawn("/dev/none", bus(9600), open);
        let r = bus
            .call(1, Request::ReadCoils(0, 1), Duration::from_millis(10))
            .await;
        assert!(matches!(r, Err(CallError::Port(m)) if m.starts_with("open /dev/none")));
    }
}
