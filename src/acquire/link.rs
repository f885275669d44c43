//! How a Modbus poller's requests reach the PLC: its own TCP connection (`modbus-tcp`), or a
//! place on a shared serial bus (`modbus-rtu`, see [`super::rtu`]).
//!
//! Owns connecting (TCP only; a bus is opened by its task), the unit id of each request and
//! the per-request timeout; never plans, decodes or retries (that is
//! [`super::modbus::ModbusPoller`]'s, the same for both links).
//!
//! Invariants: every request and every connect has a deadline (a bus request's counts from the
//! moment it is on the wire); after [`Link::disconnect`] a TCP link reconnects with fresh
//! transaction ids and a bus link reports itself down until its next answer.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{Request, Slave};

use super::rtu::{BusHandle, CallError, CallResult};
use super::{PollError, PollerStats};

/// How requests reach the PLC.
pub(super) enum Link {
    /// Its own TCP connection: `ctx` is `None` until the first poll and after every transport
    /// error.
    Tcp {
        host: String,
        port: u16,
        ctx: Option<Context>,
    },
    /// A serial bus shared with other PLCs, owned by its bus task. `up` is false until the
    /// first answer and after every transport error (so `run_plc` backs off).
    Bus { bus: BusHandle, up: bool },
}

impl Link {
    /// Sends one request to `unit`. Outer `Err`: the TCP connection could not be opened
    /// (counted in `stats.connects` when it is).
    pub(super) async fn call(
        &mut self,
        plc: &str,
        unit: u8,
        pdu: Request<'static>,
        timeout: Duration,
        stats: &mut PollerStats,
    ) -> Result<CallResult, PollError> {
        match self {
            Link::Tcp { host, port, ctx } => {
                let ctx = tcp_connection(plc, host, *port, ctx, timeout, stats).await?;
                ctx.set_slave(Slave(unit));
                Ok(match tokio::time::timeout(timeout, ctx.call(pdu)).await {
                    Err(_) => Err(CallError::TimedOut),
                    Ok(Err(e)) => Err(CallError::Failed(e)),
                    Ok(Ok(answer)) => Ok(answer),
                })
            }
            Link::Bus { bus, up } => {
                let result = bus.call(unit, pdu, timeout).await;
                if result.is_ok() && !*up {
                    *up = true;
                    stats.connects += 1;
                }
                Ok(result)
            }
        }
    }

    /// After a transport error: the TCP connection is dropped (fresh transaction ids next
    /// time); a bus PLC counts as disconnected until its next answer.
    pub(super) fn disconnect(&mut self) {
        match self {
            Link::Tcp { ctx, .. } => *ctx = None,
            Link::Bus { up, .. } => *up = false,
        }
    }

    /// Whether the link is up (`Poller::connected`).
    pub(super) fn is_up(&self) -> bool {
        match self {
            Link::Tcp { ctx, .. } => ctx.is_some(),
            Link::Bus { up, .. } => *up,
        }
    }
}

/// The TCP connection, opened first if there is none.
async fn tcp_connection<'a>(
    plc: &str,
    host: &str,
    port: u16,
    ctx: &'a mut Option<Context>,
    timeout: Duration,
    stats: &mut PollerStats,
) -> Result<&'a mut Context, PollError> {
    if ctx.is_none() {
        let target = format!("{host}:{port}");
        let connect = TcpStream::connect((host, port));
        let stream = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(PollError::Transport(format!("connect to {target}: {e}")));
            }
            Err(_) => {
                return Err(PollError::Transport(format!(
                    "connect to {target} timed out after {} ms",
                    timeout.as_millis()
                )));
            }
        };
        // Small requests, answered one at a time: do not let Nagle hold them back.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%plc, error = %e, "could not set TCP_NODELAY");
        }
        tracing::debug!(%plc, %target, "connected");
        *ctx = Some(tokio_modbus::client::tcp::attach(stream));
        stats.connects += 1;
    }
    ctx.as_mut()
        .ok_or_else(|| PollError::Transport("not connected".into()))
}
