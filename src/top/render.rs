//! Draws a [`View`] into a ratatui buffer: one column of lines, clipped to the area (a
//! terminal of any size, even 1×1, draws without panicking). Top to bottom: the daemon and
//! outbox, one block per equipment (state and since, the shift's A/P/Q/OEE bars against the
//! targets, the open downtime, the open andons highest level first, the job and its
//! progress), the PLCs, and as many recent events as fit.

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget};

use super::{duration, EquipmentView, Figure, View};

/// Cells of one bar.
const BAR: usize = 10;
/// Andons shown per equipment before "+N more".
const ANDONS_SHOWN: usize = 3;

fn bold(c: Color) -> Style {
    Style::new().fg(c).add_modifier(Modifier::BOLD)
}

fn dim() -> Style {
    Style::new().add_modifier(Modifier::DIM)
}

fn state_style(state: &str) -> Style {
    match state {
        "running" => bold(Color::Green),
        "stopped" => bold(Color::Yellow),
        "faulted" => bold(Color::Red),
        "planned_stop" => bold(Color::Cyan),
        "changeover" => bold(Color::Magenta),
        _ => Style::new().fg(Color::Red).add_modifier(Modifier::DIM),
    }
}

fn priority_style(priority: &str) -> Style {
    match priority {
        "critical" => bold(Color::White).bg(Color::Red),
        "high" => bold(Color::Red),
        "medium" => bold(Color::Yellow),
        _ => bold(Color::Cyan),
    }
}

/// `A ######|--- 72%`: filled cells for the value, `|` at the target, coloured green at or
/// above the target, yellow within 10 points of it, red below.
pub fn bar(f: &Figure) -> Vec<Span<'static>> {
    let label = Span::styled(
        format!("{:<3} ", f.label),
        Style::new().add_modifier(Modifier::BOLD),
    );
    let Some(v) = f.value else {
        return vec![
            label,
            Span::styled(format!("{} {:>4}", "-".repeat(BAR), "--"), dim()),
        ];
    };
    let filled = ((v.clamp(0.0, 1.0) * BAR as f64).round() as usize).min(BAR);
    let tick = f
        .target
        .map(|t| ((t.clamp(0.0, 1.0) * BAR as f64).round() as usize).clamp(1, BAR) - 1);
    let colour = match f.target {
        Some(t) if v + 1e-9 >= t => Color::Green,
        Some(t) if v + 0.1 >= t => Color::Yellow,
        Some(_) => Color::Red,
        None => Color::White,
    };
    let mut cells = String::with_capacity(BAR);
    for i in 0..BAR {
        cells.push(if Some(i) == tick {
            '|'
        } else if i < filled {
            '#'
        } else {
            '-'
        });
    }
    vec![
        label,
        Span::styled(cells, Style::new().fg(colour)),
        Span::styled(
            format!(" {:>3}%", (v * 100.0).round() as i64),
            Style::new().fg(colour),
        ),
    ]
}

fn equipment_lines(v: &View, e: &EquipmentView, out: &mut Vec<Line<'static>>) {
    let since = e
        .since_ms
        .map(|s| {
            format!(
                "  since {} ({})",
                v.clock(s),
                duration((v.now_ms - s) as f64 / 1000.0)
            )
        })
        .unwrap_or_default();
    out.push(Line::from(vec![
        Span::styled(e.code.clone(), bold(Color::White)),
        Span::raw(format!(" {}  ", e.name)),
        Span::styled(e.state.to_uppercase(), state_style(&e.state)),
        Span::raw(since),
    ]));
    let mut bars = vec![Span::raw(" ")];
    for (i, f) in e.figures.iter().enumerate() {
        if i > 0 {
            bars.push(Span::raw(" "));
        }
        bars.extend(bar(f));
    }
    out.push(Line::from(bars));
    match &e.downtime {
        Some(d) => out.push(Line::from(vec![
            Span::styled(" DOWN ", bold(Color::Red)),
            Span::raw(format!(
                "{} {} [{}] {}",
                d.reason_code,
                d.reason,
                d.category,
                duration(d.duration_s)
            )),
        ])),
        None => out.push(Line::styled(" no open downtime", dim())),
    }
    let mut andons: Vec<_> = e.andons.iter().collect();
    andons.sort_by(|a, b| b.level.cmp(&a.level).then(a.raised_ms.cmp(&b.raised_ms)));
    for a in andons.iter().take(ANDONS_SHOWN) {
        let age = a
            .raised_ms
            .map(|r| duration((v.now_ms - r) as f64 / 1000.0))
            .unwrap_or_else(|| "?".into());
        let ack = a
            .acknowledged_by
            .as_ref()
            .map(|w| format!("  ack {w}"))
            .unwrap_or_else(|| "  UNACKNOWLEDGED".into());
        out.push(Line::from(vec![
            Span::raw(" "),
            Span::styled(
                format!("ANDON L{} {}", a.level, a.priority),
                priority_style(&a.priority),
            ),
            Span::raw(format!(" {} {} {age}{ack}", a.reason_code, a.description)),
        ]));
    }
    if andons.len() > ANDONS_SHOWN {
        out.push(Line::styled(
            format!(" +{} more andon(s)", andons.len() - ANDONS_SHOWN),
            bold(Color::Red),
        ));
    }
    let mut shift = format!("  shift {}", e.shift.as_deref().unwrap_or("-"));
    if let Some((run, interval)) = e.maintenance {
        let due = if run >= interval { " DUE" } else { "" };
        shift.push_str(&format!("  maint {run:.1}/{interval} h{due}"));
    }
    match &e.job {
        Some(j) => {
            let progress = match j.target {
                Some(t) if t > 0 => format!(
                    "{}/{t} ({}%)",
                    j.actual,
                    (j.actual as f64 * 100.0 / t as f64).round() as u64
                ),
                _ => format!("{} made", j.actual),
            };
            out.push(Line::from(vec![
                Span::raw(format!(" job {}", j.job_id)),
                Span::raw(
                    j.product
                        .as_ref()
                        .map(|p| format!(" {p}"))
                        .unwrap_or_default(),
                ),
                Span::styled(format!("  {progress}"), bold(Color::Cyan)),
                Span::styled(shift, dim()),
            ]));
        }
        None => out.push(Line::styled(format!(" no job{shift}"), dim())),
    }
}

/// Every line of the screen for a terminal `height` rows high; recent events fill what is
/// left.
pub fn lines(v: &View, height: u16) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    if let Some(b) = &v.banner {
        out.push(Line::styled(b.clone(), bold(Color::Yellow)));
    }
    let daemon = if v.alive {
        Span::styled("running", bold(Color::Green))
    } else {
        Span::styled("NOT RUNNING", bold(Color::White).bg(Color::Red))
    };
    let heartbeat = v
        .heartbeat_age_s
        .map(|a| format!(" (heartbeat {a:.1}s ago)"))
        .unwrap_or_else(|| " (no heartbeat)".into());
    out.push(Line::from(vec![
        Span::styled(
            "ms5-edge top ",
            Style::new().add_modifier(Modifier::REVERSED),
        ),
        Span::raw(format!(" {}  daemon ", v.gateway)),
        daemon,
        Span::raw(heartbeat),
        Span::raw(format!("  {}  q quit", v.clock(v.now_ms))),
    ]));
    let oldest = v
        .oldest_unsent_age_s
        .map(|a| format!(", oldest {}", duration(a)))
        .unwrap_or_default();
    let outbox_style = if v.oldest_unsent_age_s.is_some_and(|a| a > 60.0) {
        bold(Color::Yellow)
    } else {
        Style::new()
    };
    let mut second = vec![Span::styled(
        format!("outbox {} msg{oldest}", v.outbox_depth),
        outbox_style,
    )];
    match &v.broker {
        Some((b, true)) => second.push(Span::styled(
            format!("  broker {b} connected"),
            Style::new().fg(Color::Green),
        )),
        Some((b, false)) => second.push(Span::styled(
            format!("  broker {b} DISCONNECTED"),
            bold(Color::Red),
        )),
        None => second.push(Span::styled("  no broker", dim())),
    }
    out.push(Line::from(second));
    for e in &v.equipment {
        equipment_lines(v, e, &mut out);
    }
    out.push(Line::styled(
        format!(
            "{:<12} {:<8} {:>9} {:>7} {:>9}  last error",
            "plc", "link", "polls", "failed", "late p99"
        ),
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
    ));
    for p in &v.plcs {
        let link = if p.online {
            Span::styled(format!("{:<8}", "online"), Style::new().fg(Color::Green))
        } else {
            Span::styled(format!("{:<8}", "OFFLINE"), bold(Color::Red))
        };
        out.push(Line::from(vec![
            Span::raw(format!("{:<12} ", p.name)),
            link,
            Span::raw(format!(
                " {:>9} {:>7} {:>7.1}ms  {}",
                p.polls,
                p.failed,
                p.lateness_p99_us as f64 / 1000.0,
                p.last_error.as_deref().unwrap_or("-")
            )),
        ]));
    }
    let room = (height as usize).saturating_sub(out.len() + 1);
    if room > 0 {
        out.push(Line::styled(
            "recent events",
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        ));
        for ev in v.events.iter().take(room) {
            out.push(Line::from(vec![
                Span::styled(v.clock(ev.at_ms), dim()),
                Span::raw(format!(" {} {}", ev.equipment, ev.what)),
            ]));
        }
    }
    out
}

/// Draws `v` into `area` of `buf` (clipped, no wrapping).
pub fn draw(v: &View, area: Rect, buf: &mut Buffer) {
    Paragraph::new(lines(v, area.height)).render(area, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::tests::view;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    /// The screen of a `w`×`h` terminal showing `v`, one string per row.
    fn screen(v: &View, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap_or_else(|e| panic!("{e}"));
        t.draw(|f| draw(v, f.area(), f.buffer_mut()))
            .unwrap_or_else(|e| panic!("{e}"));
        let buf = t.backend().buffer();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    fn row_with<'a>(s: &'a [String], needle: &str) -> &'a str {
        s.iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no row with {needle:?} in\n{}", s.join("\n")))
    }

    #[test]
    fn an_80_by_24_screen_shows_equipment_state_bars_downtime_andon_job_plcs_and_events() {
        let s = screen(&view(), 80, 24);
        println!("{}", s.join("\n"));
        let bag = row_with(&s, "BP01.PACK.BAG1 Bagger 1");
        assert!(
            bag.contains("FAULTED") && bag.contains("since 21:24:40 (2m00s)"),
            "{bag}"
        );
        let bars = row_with(&s, "OEE");
        assert!(bars.contains("A   #######-|-  72%"), "{bars}");
        assert!(bars.contains("P   #########|  95%"), "{bars}");
        assert!(bars.contains("OEE #######-|-  68%"), "{bars}");
        assert!(row_with(&s, "DOWN").contains("F_FILM Film break [unplanned] 2m00s"));
        let andon = row_with(&s, "ANDON");
        assert!(
            andon.contains("ANDON L2 high F_FILM Film break 1m00s  UNACKNOWLEDGED"),
            "{andon}"
        );
        assert!(row_with(&s, "job J-100").contains("1250/5000 (25%)  shift B"));
        assert!(row_with(&s, "BP01.PACK.BAG1.BL").contains("RUNNING"));
        assert!(row_with(&s, "loader").contains("OFFLINE"));
        assert!(row_with(&s, "bagger ").contains("0.8ms"));
        assert!(row_with(&s, "outbox")
            .contains("outbox 42 msg, oldest 12s  broker 127.0.0.1:1883 connected"));
        assert!(row_with(&s, "21:25:40").contains("andon high L2 F_FILM"));
        assert!(s[0].contains("daemon running"), "{}", s[0]);
    }

    #[test]
    fn every_line_fits_80_columns() {
        let v = view();
        for l in lines(&v, 24) {
            assert!(l.width() <= 80, "{} columns: {l}", l.width());
        }
    }

    #[test]
    fn a_tiny_or_empty_terminal_draws_without_panicking() {
        for (w, h) in [(40, 10), (1, 1), (80, 3), (200, 60)] {
            let s = screen(&view(), w, h);
            assert_eq!(s.len(), h as usize);
        }
        let mut buf = Buffer::empty(Rect::new(0, 0, 0, 0));
        draw(&view(), Rect::new(0, 0, 0, 0), &mut buf);
    }

    #[test]
    fn a_stale_heartbeat_says_not_running() {
        let mut v = view();
        v.alive = false;
        assert!(screen(&v, 80, 24)[0].contains("NOT RUNNING"));
    }

    #[test]
    fn bars_are_green_at_target_yellow_near_it_and_red_below() {
        let fg = |value, target| {
            let f = Figure {
                label: "A",
                value: Some(value),
                target: Some(target),
            };
            bar(&f)[1].style.fg
        };
        assert_eq!(fg(0.95, 0.95), Some(Color::Green));
        assert_eq!(fg(0.90, 0.95), Some(Color::Yellow));
        assert_eq!(fg(0.50, 0.95), Some(Color::Red));
        let unknown = bar(&Figure {
            label: "Q",
            value: None,
            target: Some(0.9),
        });
        assert!(unknown
            .iter()
            .map(|s| s.content.as_ref())
            .collect::<String>()
            .contains("----------   --"));
    }
}
