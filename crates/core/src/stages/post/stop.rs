//! Stop sequences on a token stream: text is released as soon as it cannot be the start of a
//! stop sequence, and the output ends right before the first one.

/// Watches streamed text for stop sequences.
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    /// Text that might be the start of a stop sequence, held back until it is known not to be.
    held: String,
}

/// What one piece of text produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Text that is safe to emit now.
    pub emit: String,
    /// A stop sequence was reached; nothing after it may be emitted.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Feeds the next piece of text.
    pub fn push(&mut self, text: &str) -> Scan {
        if self.stops.is_empty() {
            return Scan {
                emit: text.to_string(),
                stopped: false,
            };
        }
        self.held.push_str(text);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first_stop {
            self.held.truncate(at);
            return Scan {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        let keep = self.longest_partial_suffix();
        let emit: String = self.held.drain(..self.held.len() - keep).collect();
        Scan { emit, stopped: false }
    }

    /// The stream ended: whatever was held back is plain text after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop sequence.
    fn longest_partial_suffix(&self) -> usize {
        let held = self.held.as_str();
        self.stops
            .iter()
            .filter_map(|stop| {
                (1..stop.len().min(held.len() + 1))
                    .rev()
                    .filter(|&n| held.is_char_boundary(held.len() - n) && stop.is_char_boundary(n))
                    .find(|&n| held.ends_with(&stop[..n]))
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let scan = m.push(p);
            out.push_str(&scan.emit);
            if scan.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stops_across_token_boundaries() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn releases_partial_matches_that_do_not_complete() {
        let stops = vec!["STOP".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("ab ST").emit, "ab ");
        assert_eq!(m.push("x").emit, "STx");
        assert_eq!(run(&["STOP"], &["ST"]), ("ST".into(), false));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_text_is_safe() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
        assert_eq!(run(&["é!"], &["café", "é!"]), ("café".into(), true));
        assert_eq!(run(&["日本"], &["今日", "は日"]), ("今日は日".into(), false));
    }
}
