//! `top --plain`: one line per change of what the screen shows — the daemon's liveness, each
//! equipment's state, open downtime, open andons and job, each PLC's link, the broker link —
//! never a line per second. Durations and counters are not "changes".

use std::collections::BTreeMap;
use std::io::Write;

use crate::clock::{rfc3339_ms, Clock};
use crate::config::Config;

use super::View;

/// What `--plain` watches: key → (the line while it holds, the line when it goes away).
pub type Facts = BTreeMap<String, (String, String)>;

/// The facts of one view.
pub fn facts(v: &View) -> Facts {
    let mut f = Facts::new();
    let mut put = |k: String, now: String, gone: String| {
        f.insert(k, (now, gone));
    };
    put(
        "daemon".into(),
        if v.alive {
            "daemon running".into()
        } else {
            "daemon NOT RUNNING (no recent heartbeat)".into()
        },
        String::new(),
    );
    if let Some((b, up)) = &v.broker {
        let s = if *up { "connected" } else { "DISCONNECTED" };
        put("broker".into(), format!("broker {b} {s}"), String::new());
    }
    for e in &v.equipment {
        let c = &e.code;
        put(
            format!("{c} state"),
            format!("{c} state {}", e.state),
            String::new(),
        );
        if let Some(d) = &e.downtime {
            put(
                format!("{c} downtime"),
                format!(
                    "{c} downtime {} {} [{}]",
                    d.reason_code, d.reason, d.category
                ),
                format!("{c} downtime ended"),
            );
        }
        for a in &e.andons {
            let ack = a
                .acknowledged_by
                .as_ref()
                .map(|w| format!(" acknowledged by {w}"))
                .unwrap_or_default();
            put(
                format!("{c} andon {}", a.id),
                format!(
                    "{c} andon L{} {} {} {}{ack}",
                    a.level, a.priority, a.reason_code, a.description
                ),
                format!("{c} andon {} resolved", a.reason_code),
            );
        }
        if let Some(j) = &e.job {
            put(
                format!("{c} job"),
                format!("{c} job {}", j.job_id),
                format!("{c} job ended"),
            );
        }
    }
    for p in &v.plcs {
        let link = if p.online { "online" } else { "OFFLINE" };
        put(
            format!("plc {}", p.name),
            format!("plc {} {link}", p.name),
            String::new(),
        );
    }
    f
}

/// The lines that take `old` to `new` (everything, when there is no `old`), each prefixed
/// with `at`.
pub fn changes(old: Option<&Facts>, new: &Facts, at: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (k, (now, _)) in new {
        if old.and_then(|o| o.get(k)).map(|(t, _)| t) != Some(now) {
            out.push(format!("{at} {now}"));
        }
    }
    for (k, (_, gone)) in old.into_iter().flatten() {
        if !new.contains_key(k) && !gone.is_empty() {
            out.push(format!("{at} {gone}"));
        }
    }
    out
}

/// Prints a line per change, reading the database once a second, until `stop` resolves.
/// Returns when stdout goes away too (a closed pipe is not an error).
pub async fn run(
    config: &Config,
    first: View,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(stop);
    let mut out = std::io::stdout();
    let mut old: Option<Facts> = None;
    let mut view = Ok(first);
    let mut read_error: Option<String> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let now_ms = Clock::system().now_ms();
        let at = rfc3339_ms(now_ms);
        let mut lines = Vec::new();
        match view {
            Ok(v) => {
                read_error = None;
                let new = facts(&v);
                lines = changes(old.as_ref(), &new, &at);
                old = Some(new);
            }
            Err(e) if read_error.as_ref() != Some(&e) => {
                lines.push(format!("{at} cannot read the database: {e}"));
                read_error = Some(e);
            }
            Err(_) => {}
        }
        for l in lines {
            if writeln!(out, "{l}").is_err() {
                return Ok(());
            }
        }
        if out.flush().is_err() {
            return Ok(());
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {}
        }
        let c = config.clone();
        view = tokio::task::spawn_blocking(move || super::read(&c, Clock::system().now_ms()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::tests::view;

    #[test]
    fn the_first_view_prints_every_fact() {
        let lines = changes(None, &facts(&view()), "T");
        assert!(
            lines.contains(&"T BP01.PACK.BAG1 state faulted".to_string()),
            "{lines:?}"
        );
        assert!(lines.contains(&"T BP01.PACK.BAG1 andon L2 high F_FILM Film break".to_string()));
        assert!(lines.contains(&"T plc loader OFFLINE".to_string()));
        assert!(lines.contains(&"T daemon running".to_string()));
    }

    #[test]
    fn a_view_that_only_aged_prints_nothing() {
        let a = view();
        let mut b = a.clone();
        b.now_ms += 5_000;
        b.plcs[0].polls += 10;
        b.outbox_depth += 3;
        if let Some(d) = b.equipment[0].downtime.as_mut() {
            d.duration_s += 5.0;
        }
        assert!(changes(Some(&facts(&a)), &facts(&b), "T").is_empty());
    }

    #[test]
    fn a_resolved_andon_and_an_ended_downtime_print_their_end() {
        let a = view();
        let mut b = a.clone();
        b.equipment[0].andons.clear();
        b.equipment[0].downtime = None;
        b.equipment[0].state = "running".into();
        let lines = changes(Some(&facts(&a)), &facts(&b), "T");
        assert_eq!(
            lines,
            vec![
                "T BP01.PACK.BAG1 state running",
                "T BP01.PACK.BAG1 andon F_FILM resolved",
                "T BP01.PACK.BAG1 downtime ended",
            ],
        );
    }

    #[test]
    fn an_acknowledgement_and_a_plc_coming_back_are_changes() {
        let a = view();
        let mut b = a.clone();
        b.equipment[0].andons[0].acknowledged_by = Some("lead".into());
        b.plcs[1].online = true;
        let lines = changes(Some(&facts(&a)), &facts(&b), "T");
        assert_eq!(
            lines,
            vec![
                "T BP01.PACK.BAG1 andon L2 high F_FILM Film break acknowledged by lead",
                "T plc loader online",
            ],
        );
    }
}
