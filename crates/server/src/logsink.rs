//! Where log lines go: stderr, with access-log lines written in batches.
//!
//! Every request writes one access-log line, and a `write` system call per line was a measurable
//! part of the gateway's CPU time per request. Access lines are therefore held in a buffer
//! and written together: when it reaches [`BATCH_BYTES`], at most [`BATCH_DELAY`] after it
//! began filling (a flusher thread), when any other line is logged (it goes out behind them, so
//! lines never change order), and when the process ends ([`flush`]). Lines are never split:
//! the formatter hands over each whole line in one `write`.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// The target of the access-log lines, the ones that are batched.
pub const ACCESS_TARGET: &str = "orchestrator::access";
/// A batch is written once it holds this much.
pub const BATCH_BYTES: usize = 16 * 1024;
/// The longest an access line waits before it is written.
pub const BATCH_DELAY: Duration = Duration::from_millis(100);

/// A line-ordered writer that holds access lines back in a buffer.
pub struct Batched<W: Write> {
    state: Mutex<State<W>>,
}

struct State<W> {
    held: Vec<u8>,
    out: W,
}

impl<W: Write> Batched<W> {
    pub fn new(out: W) -> Self {
        Self {
            state: Mutex::new(State {
                held: Vec::with_capacity(BATCH_BYTES),
                out,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // Every critical section leaves the buffer whole; a poisoned lock holds valid lines.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one whole line; `hold` lines may wait in the buffer, others are written at once
    /// (behind whatever was held).
    fn line(&self, bytes: &[u8], hold: bool) -> io::Result<()> {
        self.append(hold, |held| {
            held.extend_from_slice(bytes);
            Ok(())
        })
    }

    /// Holds the whole line that `write` appends to the buffer (held like a line given to `line`);
    /// if `write` fails, nothing of it is kept.
    pub fn hold_with(&self, write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        self.append(true, write)
    }

    fn append(&self, hold: bool, write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        let mut state = self.lock();
        let start = state.held.len();
        if let Err(e) = write(&mut state.held) {
            state.held.truncate(start);
            return Err(e);
        }
        if hold && state.held.len() < BATCH_BYTES {
            return Ok(());
        }
        state.write_held()
    }

    /// Writes out whatever is held.
    pub fn flush(&self) -> io::Result<()> {
        self.lock().write_held()
    }
}

impl<W: Write> State<W> {
    fn write_held(&mut self) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        // The buffer is emptied even when the write fails: a log that cannot be written must not
        // grow without bound.
        let result = self.out.write_all(&self.held).and_then(|()| self.out.flush());
        self.held.clear();
        result
    }
}

/// One log line's writer.
pub struct LineWriter<'a, W: Write> {
    sink: &'a Batched<W>,
    hold: bool,
}

impl<W: Write> Write for LineWriter<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.sink.line(bytes, self.hold)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, 'b, W: Write + 'b> MakeWriter<'a> for &'b Batched<W> {
    type Writer = LineWriter<'b, W>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            sink: self,
            hold: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            sink: self,
            hold: meta.target() == ACCESS_TARGET,
        }
    }
}

/// The process's log output: stderr, batched, with its flusher thread started on first use.
pub fn stderr() -> &'static Batched<io::Stderr> {
    static SINK: OnceLock<Batched<io::Stderr>> = OnceLock::new();
    SINK.get_or_init(|| {
        std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(BATCH_DELAY);
                    // Nothing to do about a log that cannot be written.
                    let _ = stderr().flush();
                }
            })
            .ok();
        Batched::new(io::stderr())
    })
}

/// Writes out held log lines; call before the process exits.
pub fn flush() {
    let _ = stderr().flush();
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::fmt::format::FmtSpan;

    use super::*;

    fn sink() -> &'static Batched<Vec<u8>> {
        Box::leak(Box::new(Batched::new(Vec::new())))
    }

    /// Logs with a subscriber writing to `sink` while `f` runs.
    fn with_sink(sink: &'static Batched<Vec<u8>>, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(sink)
            .with_ansi(false)
            .without_time()
            .with_span_events(FmtSpan::NONE)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
    }

    fn written(sink: &Batched<Vec<u8>>) -> String {
        String::from_utf8(sink.lock().out.clone()).unwrap()
    }

    #[test]
    fn access_lines_wait_and_other_lines_take_them_out_in_order() {
        let sink = sink();
        with_sink(sink, || {
            tracing::info!(target: "orchestrator::access", n = 1);
            tracing::info!(target: "orchestrator::access", n = 2);
        });
        assert!(sink.lock().out.is_empty(), "access lines are held");
        with_sink(sink, || tracing::warn!("something else"));
        let text = written(sink);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].ends_with("n=1") && lines[1].ends_with("n=2"), "{text}");
        assert!(lines[2].ends_with("something else"), "{text}");
    }

    #[test]
    fn flush_writes_what_is_held() {
        let sink = sink();
        with_sink(sink, || tracing::info!(target: "orchestrator::access", n = 1));
        sink.flush().unwrap();
        assert!(written(sink).ends_with("n=1\n"));
    }

    #[test]
    fn a_full_batch_is_written_whole_lines_only() {
        let sink = sink();
        let line = "x".repeat(1000);
        let mut sent = 0;
        with_sink(sink, || {
            while sink.lock().out.is_empty() {
                tracing::info!(target: "orchestrator::access", %line);
                sent += 1;
            }
        });
        let out = written(sink);
        assert!(out.len() >= BATCH_BYTES);
        assert_eq!(out.lines().count(), sent, "every line sent so far, each whole");
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn lines_written_into_the_buffer_wait_in_order_and_a_failed_one_leaves_nothing() {
        let sink = sink();
        sink.hold_with(|buf| buf.write_all(b"first\n")).unwrap();
        let failed = sink.hold_with(|buf| {
            buf.write_all(b"half a li")?;
            Err(io::Error::other("cannot write"))
        });
        assert!(failed.is_err());
        assert!(sink.lock().out.is_empty(), "held lines wait");
        with_sink(sink, || tracing::warn!("something else"));
        let text = written(sink);
        assert!(
            text.starts_with("first\n") && text.ends_with("something else\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
