//! How an ingest reports its progress: a bar for a person at a terminal, log lines for a service
//! or CI, or nothing.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::ingest::IngestSummary;

/// How [`ingest`](super::ingest) reports its progress through the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar on stderr.
    Bar,
    /// An `info` log line every `every` files (and one at the end): a bar's redraws would only
    /// clutter a log file.
    Log { every: usize },
    /// Nothing but the final summary, which the caller prints.
    Quiet,
}

impl Progress {
    /// A bar when stderr is a terminal, else a log line every 100 files.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Log { every: 100 }
        }
    }

    pub(crate) fn start(self, total: usize) -> Reporter {
        let bar = match self {
            Progress::Bar => {
                let bar = ProgressBar::new(total as u64);
                // The template is a literal, so this only fails if it is edited wrongly; the bar
                // then keeps indicatif's default look rather than failing the ingest.
                if let Ok(style) =
                    ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} files {msg}")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                Some(bar)
            }
            Progress::Log { .. } | Progress::Quiet => None,
        };
        Reporter {
            mode: self,
            bar,
            total,
            done: 0,
            started: Instant::now(),
        }
    }
}

/// Progress of one ingest.
pub(crate) struct Reporter {
    mode: Progress,
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    started: Instant,
}

impl Reporter {
    /// One more file is done (indexed or found unchanged).
    pub fn file_done(&mut self, source: &str) {
        self.done += 1;
        match self.mode {
            Progress::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_message(source.to_owned());
                    bar.inc(1);
                }
            }
            Progress::Log { every } => {
                if self.done.is_multiple_of(every.max(1)) && self.done < self.total {
                    tracing::info!(
                        done = self.done,
                        total = self.total,
                        seconds = self.started.elapsed().as_secs_f64(),
                        "Ingesting files."
                    );
                }
            }
            Progress::Quiet => {}
        }
    }

    /// The ingest is committed. In log mode its summary is the last line; otherwise the caller
    /// decides where the summary goes (a command line prints it).
    pub fn finish(&mut self, summary: &IngestSummary) {
        self.clear();
        if let Progress::Log { .. } = self.mode {
            tracing::info!(
                files_indexed = summary.files_indexed,
                files_unchanged = summary.files_unchanged,
                files_removed = summary.files_removed,
                files_skipped = summary.files_skipped,
                chunks_added = summary.chunks_added,
                lines_skipped = summary.lines_skipped,
                "{summary}."
            );
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    /// An ingest that fails part-way must not leave a half-drawn bar behind its error message.
    fn drop(&mut self) {
        self.clear();
    }
}
