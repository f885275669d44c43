//! The terminal half of `top`: raw mode and the alternate screen (restored on return, on
//! error and on panic), a redraw once a second and on resize, `q`/Esc/Ctrl-C to quit.
//! Everything it shows comes from the caller's `source`; nothing here reads the database.

use std::io::{self, Stdout};
use std::sync::Once;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{cursor, execute};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::{render, View};

/// How often the view is read again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The longest wait for a key before `stop` is asked again.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// Puts the terminal back as it was: cooked mode, main screen, cursor shown. Safe to call
/// more than once and when nothing was changed.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Raw mode and the alternate screen for as long as it lives.
struct Screen;

impl Screen {
    fn enter() -> io::Result<Screen> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        terminal::enable_raw_mode()?;
        let screen = Screen;
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// What a key press means.
fn quits(key: &event::KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// Shows `source()` full screen, read again every [`REFRESH`], until the user quits or
/// `stop()` says so. The terminal is restored before this returns, whatever happened.
pub fn run(mut source: impl FnMut() -> View, stop: impl Fn() -> bool) -> io::Result<()> {
    let _screen = Screen::enter()?;
    let mut terminal: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    let mut view = source();
    let mut next = Instant::now() + REFRESH;
    let mut dirty = true;
    loop {
        if Instant::now() >= next {
            view = source();
            next = Instant::now() + REFRESH;
            dirty = true;
        }
        if dirty {
            terminal.draw(|f| render::draw(&view, f.area(), f.buffer_mut()))?;
            dirty = false;
        }
        if stop() {
            return Ok(());
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(STOP_CHECK);
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(k) if quits(&k) => return Ok(()),
                Event::Resize(..) => {
                    terminal.autoresize()?;
                    terminal.clear()?;
                    dirty = true;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::KeyEvent;

    #[test]
    fn q_escape_and_ctrl_c_quit_and_other_keys_do_not() {
        let k = |code, m| KeyEvent::new(code, m);
        assert!(quits(&k(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&k(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&k(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&k(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&k(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
