//! `orchestrator top`: a running gateway's live stats in the terminal, in the spirit of `vector
//! top`, read from its feed `GET /admin/stats/stream` (one snapshot every half second).
//!
//! - [`feed`]: the task that follows the feed, reconnecting every second, into a `watch`;
//! - [`layout`]: which sections fit the terminal, and where;
//! - [`render`] and [`tables`]: drawing a frame; [`format`]: the numbers in it.
//!
//! The UI loop redraws when a snapshot comes, on a key or a resize, and every second (the age
//! of the data shown while reconnecting). `q`, `Esc`, Ctrl-C, SIGINT and SIGTERM end it with
//! status 0; the terminal is restored on every way out, a panic included.

mod feed;
mod format;
mod layout;
mod render;
mod tables;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures_util::StreamExt;
use ratatui::DefaultTerminal;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::MissedTickBehavior;

use self::feed::Link;

/// Exit status of a mistaken `--url` (as clap's own usage errors).
const USAGE: u8 = 2;

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// The gateway's base URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key (`admin = true` in [[auth.keys]]), sent as `Authorization: Bearer KEY`;
    /// needed when the gateway has keys.
    #[arg(
        long,
        value_name = "KEY",
        env = "ORCHESTRATOR_ADMIN_KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
}

/// Runs `orchestrator top` until the user quits: 0 then, 1 when the gateway refuses the key or
/// the terminal fails, 2 for a mistaken `--url`. A gateway that cannot be reached is no error:
/// the screen says so and tries again every second.
pub async fn run(args: &TopArgs) -> ExitCode {
    let url = match feed::stream_url(&args.url) {
        Ok(url) => url,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(USAGE);
        }
    };
    match show(url, args.key.clone()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // The terminal is back to normal by now: the screen went with `show`.
            eprintln!("orchestrator top: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn show(url: reqwest::Url, key: Option<String>) -> Result<(), String> {
    let shown_url = url.as_str().to_owned();
    let hint = if key.is_some() {
        "The key given (--key or ORCHESTRATOR_ADMIN_KEY) was refused: give an admin key of the gateway \
         (one with `admin = true` in [[auth.keys]])."
    } else {
        "The gateway has API keys: give an admin key with --key KEY or ORCHESTRATOR_ADMIN_KEY."
    };
    let mut feed = feed::spawn(url, key)?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot listen for SIGINT: {e}"))?;
    let mut screen = Screen::open()?;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // A copy, so the feed's task never waits for a frame to be drawn.
        let view = feed.borrow_and_update().clone();
        if let Link::Refused(why) = &view.link {
            return Err(format!("{why}\n{hint}"));
        }
        screen
            .0
            .draw(|frame| render::draw(frame, &view, &shown_url))
            .map_err(|e| format!("cannot draw: {e}"))?;
        // Whichever comes first means drawing again (or leaving): a snapshot, a key or a
        // resize, a signal, or the tick that ages the data shown while reconnecting.
        tokio::select! {
            changed = feed.changed() => {
                if changed.is_err() {
                    return Err("the feed's task ended".into());
                }
            }
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if quits(&key) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("cannot read the terminal: {e}")),
                None => return Err("the terminal's input ended".into()),
            },
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
    }
}

/// `q`, `Esc` and Ctrl-C quit (raw mode turns Ctrl-C into a key, not a SIGINT).
fn quits(key: &KeyEvent) -> bool {
    key.kind != KeyEventKind::Release
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// The terminal in raw mode on the alternate screen, given back as it was when dropped. A panic
/// gives it back too (before its message), by the hook `ratatui::try_init` installs.
struct Screen(DefaultTerminal);

impl Screen {
    fn open() -> Result<Self, String> {
        if !std::io::stdout().is_terminal() {
            return Err("the output is not a terminal; top draws a screen, and needs one".into());
        }
        match ratatui::try_init() {
            Ok(terminal) => Ok(Self(terminal)),
            Err(e) => {
                // Raw mode may be on even though the alternate screen failed.
                let _ = ratatui::try_restore();
                Err(format!("cannot set up the terminal: {e}"))
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        // Nothing is left to do if this fails, and the message would go to the broken screen.
        let _ = ratatui::try_restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_escape_and_ctrl_c_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
