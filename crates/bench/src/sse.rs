//! A minimal server-sent-events reader for OpenAI chat streams, and the token timings taken
//! from it: time to first token (TTFT) and inter-token latency (ITL).
//!
//! Only `data:` fields matter here. An event counts as a token when its JSON carries a
//! non-empty `choices[].delta.content` (or `text`, for completions); `[DONE]` ends the stream.
//! Chunks that arrive in the same read get the same timestamp, so an upstream that sends
//! faster than the network reads shows ITL 0 for those.

use serde::Deserialize;
use std::time::{Duration, Instant};

/// What one SSE event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A chunk with generated text.
    Token,
    /// A chunk without text (the role, a finish reason, usage) or one that is not JSON.
    Other,
    /// `data: [DONE]`.
    Done,
}

/// Splits a byte stream into events; bytes may be cut anywhere between pushes.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The `data` of the event being read (several `data:` lines are joined with `\n`).
    data: Vec<u8>,
    /// Whether the current event has had a `data:` field at all.
    has_data: bool,
}

impl SseParser {
    /// Reads `bytes` and appends every event they complete to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if self.has_data {
                    out.push(classify(&self.data));
                }
                self.data.clear();
                self.has_data = false;
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            // Other fields (event:, id:, retry:) and comments (":") do not matter here.
            line.clear();
            self.line = line;
        }
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

fn classify(data: &[u8]) -> Event {
    if data == b"[DONE]" {
        return Event::Done;
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
        return Event::Other;
    };
    let has_text = chunk.choices.iter().any(|c| {
        let delta = c.delta.as_ref().and_then(|d| d.content.as_deref());
        delta.or(c.text.as_deref()).is_some_and(|t| !t.is_empty())
    });
    if has_text { Event::Token } else { Event::Other }
}

/// Token timings of one stream, measured from `start` (the scheduled start in open loop).
#[derive(Debug)]
pub struct StreamTimer {
    start: Instant,
    parser: SseParser,
    events: Vec<Event>,
    /// When the first token arrived.
    first: Option<Instant>,
    /// When the latest token arrived, for the next gap.
    last: Option<Instant>,
    /// Gaps between consecutive tokens.
    pub itl: Vec<Duration>,
    /// Whether `[DONE]` was seen: a stream without it was cut.
    pub done: bool,
}

impl StreamTimer {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            parser: SseParser::default(),
            events: Vec::new(),
            first: None,
            last: None,
            itl: Vec::new(),
            done: false,
        }
    }

    /// Reads a chunk of the body that arrived `at`.
    pub fn on_bytes(&mut self, at: Instant, bytes: &[u8]) {
        self.events.clear();
        self.parser.push(bytes, &mut self.events);
        for &event in &self.events {
            match event {
                Event::Token => {
                    if self.first.is_none() {
                        self.first = Some(at);
                    }
                    if let Some(last) = self.last {
                        self.itl.push(at.saturating_duration_since(last));
                    }
                    self.last = Some(at);
                }
                Event::Done => self.done = true,
                Event::Other => {}
            }
        }
    }

    /// Time to first token, if a token came.
    pub fn ttft(&self) -> Option<Duration> {
        self.first.map(|f| f.saturating_duration_since(self.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> String {
        format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n")
    }

    #[test]
    fn parser_handles_split_lines_crlf_and_multi_line_data() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n";
        let stream = format!(
            ": comment\n{role}{}event: x\n{}data: [DONE]\n\n",
            token("a"),
            token("b")
        );
        for piece in stream.as_bytes().chunks(7) {
            p.push(piece, &mut out);
        }
        assert_eq!(out, [Event::Other, Event::Token, Event::Token, Event::Done]);
        out.clear();
        p.push(b"data: {\"choices\":\ndata: [{\"text\":\"x\"}]}\n\n", &mut out);
        assert_eq!(out, [Event::Token]);
    }

    #[test]
    fn timer_splits_ttft_and_itl_on_a_canned_stream() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut t = StreamTimer::new(start);
        // The role chunk comes first and is not a token.
        t.on_bytes(
            ms(5),
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        );
        assert_eq!(t.ttft(), None);
        // The first token is cut across two reads: it counts when it completes.
        let first = token("Hel");
        let (a, b) = first.as_bytes().split_at(10);
        t.on_bytes(ms(10), a);
        t.on_bytes(ms(12), b);
        // Two tokens in one read: the second gap is 0.
        t.on_bytes(ms(20), format!("{}{}", token("lo"), token("!")).as_bytes());
        t.on_bytes(ms(35), b"data: [DONE]\n\n");
        assert_eq!(t.ttft(), Some(Duration::from_millis(12)));
        assert_eq!(t.itl, [Duration::from_millis(8), Duration::ZERO]);
        assert!(t.done);
    }

    #[test]
    fn a_stream_without_done_is_not_done() {
        let start = Instant::now();
        let mut t = StreamTimer::new(start);
        t.on_bytes(start, token("a").as_bytes());
        assert!(!t.done);
        assert_eq!(t.ttft(), Some(Duration::ZERO));
    }
}
