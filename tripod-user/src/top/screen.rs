//! The full-screen view: ratatui drawing a [`View`] on the alternate screen
//! in raw mode, and the keys read on a thread of their own.
//!
//! The terminal is given back on every way out: [`Screen`]'s `Drop` (quit,
//! the targets gone, an error returned, SIGTERM or SIGHUP ending the loop),
//! a panic hook (a panic unwinds past nothing that would print on the
//! alternate screen), and the abort hook of a second SIGINT, which exits
//! without unwinding (see [`crate::signals`]).
use std::{
    io::{self, Stdout},
    sync::Once,
};

use anyhow::{Context as _, Result};
use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor::{Hide, Show},
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Paragraph, Row, Table},
    Terminal,
};
use tokio::sync::mpsc;

use super::{format, model::View};
use crate::{error::UsageError, signals::Shutdown};

/// What the key thread sends besides keys: the terminal changed size.
pub const RESIZED: char = '\0';

/// The terminal in raw mode on its alternate screen, until dropped.
pub struct Screen {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

/// Checks that the terminal has a size to draw in, before anything is
/// loaded: a terminal without one (a serial console, `script` without a
/// window) is a usage problem, not a failure halfway.
pub fn check_size() -> Result<(), UsageError> {
    match terminal::size() {
        Ok((columns, rows)) if columns >= 40 && rows >= 5 => Ok(()),
        Ok((columns, rows)) => Err(UsageError::new(format!(
            "the terminal is {columns}x{rows}, too small for top (at least 40x5); \
             enlarge it, or pipe the output for a plain table"
        ))),
        Err(e) => Err(UsageError::new(format!(
            "cannot tell the terminal's size ({e}); set its size (stty rows R cols C), \
             or pipe the output for a plain table"
        ))),
    }
}

impl Screen {
    /// Switches the terminal to raw mode and the alternate screen. From now
    /// on a panic or an abort gives it back first.
    pub fn open(shutdown: &Shutdown) -> Result<Screen> {
        install_panic_hook();
        shutdown.on_abort(restore);
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        // Built now, so an error from here on still restores (by Drop).
        let mut stdout = io::stdout();
        let entered = execute!(stdout, EnterAlternateScreen, Hide);
        let screen =
            Terminal::new(CrosstermBackend::new(stdout)).map(|terminal| Screen { terminal });
        if entered.is_err() || screen.is_err() {
            restore();
        }
        entered.context("switching to the alternate screen")?;
        screen.context("setting up the terminal")
    }

    /// Draws `view`; `note` (the targets exited) goes under the header.
    pub fn draw(&mut self, view: &View, note: Option<&str>) -> Result<()> {
        self.terminal
            .draw(|frame| {
                let [header, table, keys] = Layout::vertical([
                    Constraint::Length(3),
                    Constraint::Fill(1),
                    Constraint::Length(1),
                ])
                .areas(frame.area());
                let lines = vec![
                    Line::from(format::target_line(&view.header)),
                    Line::from(format::numbers_line(&view.header)),
                    Line::from(note.unwrap_or("")).style(Style::new().add_modifier(Modifier::BOLD)),
                ];
                frame.render_widget(Paragraph::new(lines), header);
                frame.render_widget(rows_table(view, table.height as usize), table);
                frame.render_widget(Paragraph::new(format::KEYS), keys);
            })
            .context("drawing the screen")?;
        Ok(())
    }
}

fn rows_table(view: &View, height: usize) -> Table<'static> {
    let titles =
        Row::new(format::titles(&view.header)).style(Style::new().add_modifier(Modifier::REVERSED));
    let rows = view
        .rows
        .iter()
        .take(height.saturating_sub(1))
        .map(|row| Row::new(format::cells(row)));
    Table::new(
        rows,
        [
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Fill(1),
        ],
    )
    .header(titles)
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal back: raw mode off, the main screen, the cursor. Safe
/// to call more than once, and on a terminal that is gone.
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
}

/// A panic restores the terminal before its message is printed, so the
/// message shows on the main screen of a working terminal.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Reads keys on a thread of its own (crossterm's reads block), as
/// characters: Ctrl-C and Esc are `q`, a resize is [`RESIZED`]. The thread
/// ends when the terminal or the receiver is gone.
pub fn read_keys() -> Result<mpsc::UnboundedReceiver<char>> {
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("top-keys".into())
        .spawn(move || loop {
            let key = match event::read() {
                Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                    match (key.code, key.modifiers.contains(KeyModifiers::CONTROL)) {
                        (KeyCode::Char('c'), true) | (KeyCode::Esc, _) => 'q',
                        (KeyCode::Char(c), false) => c,
                        _ => continue,
                    }
                }
                Ok(Event::Resize(..)) => RESIZED,
                Ok(_) => continue,
                Err(_) => return,
            };
            if sender.send(key).is_err() {
                return;
            }
        })
        .context("starting the key reader")?;
    Ok(receiver)
}
