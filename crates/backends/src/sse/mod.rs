//! Relaying an upstream SSE stream as the worker's token stream, parsed incrementally: each token
//! goes on as soon as its event arrives. The time to the first token, the gap between tokens and
//! the call's deadline are enforced here; what an event means is the backend's [`Dialect`];
//! reading the events out of the body is [`decode`]'s.

pub mod decode;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use http_body_util::BodyDataStream;
use tokio::time::Instant;
use tokio_prompt_orchestrator::{FinishReason, Passthrough, TokenStream, Usage, WorkerChunk, WorkerError};

use self::decode::Decoder;
use crate::http::Response;
use crate::timeouts::{Timeouts, earliest};
use crate::transport;

/// What one event said.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub token: Option<String>,
    /// What the event carried besides text, for the caller (relayed after the token).
    pub extra: Option<Box<Passthrough>>,
    pub finish: Option<FinishReason>,
    pub usage: Option<Usage>,
    /// The stream is complete after this event.
    pub done: bool,
}

impl Parsed {
    /// A whole (not streamed) answer as a token stream: its text as one token, what it carried
    /// besides, then the finish.
    pub fn into_stream(self) -> TokenStream {
        let mut chunks = Vec::with_capacity(3);
        if let Some(text) = self.token {
            chunks.push(Ok(WorkerChunk::Token(text)));
        }
        if let Some(extra) = self.extra {
            chunks.push(Ok(WorkerChunk::Passthrough(extra)));
        }
        chunks.push(Ok(WorkerChunk::Finish {
            reason: self.finish.unwrap_or_default(),
            usage: self.usage,
        }));
        stream::iter(chunks).boxed()
    }
}

/// How a backend's events are read.
pub trait Dialect: Send + 'static {
    /// Reads one event's data.
    ///
    /// # Errors
    /// The upstream's message, when the event reports an error or cannot be read.
    fn parse(&mut self, data: &str) -> Result<Parsed, String>;
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

struct Reader<D> {
    body: Body,
    decoder: Decoder,
    dialect: D,
    backend: Arc<str>,
    timeouts: Timeouts,
    /// When the whole call must be over.
    deadline: Option<Instant>,
    got_token: bool,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// No more events will be read.
    done: bool,
    /// The final item (finish or error) has been produced.
    end_sent: bool,
    /// Chunks read together, going out one by one.
    queued: VecDeque<WorkerChunk>,
    /// Top-level fields that came alone (an opening chunk's `system_fingerprint`): not output
    /// yet, so they wait for the first real output and go out just before it. Until then the
    /// call can still be retried elsewhere and the first-token limit still applies.
    held: Option<Box<Passthrough>>,
}

/// The token stream of an SSE `response`. A stream that ends before the dialect has seen its
/// end (or a finish reason) is an error, never a quiet truncation.
pub fn relay<D: Dialect>(
    response: Response,
    dialect: D,
    backend: Arc<str>,
    timeouts: Timeouts,
    deadline: Option<Instant>,
) -> TokenStream {
    let body: Body =
        Box::pin(BodyDataStream::new(response.into_body()).map(|r| r.map_err(|e| transport::describe(&*e))));
    let reader = Reader {
        body,
        decoder: Decoder::default(),
        dialect,
        backend,
        timeouts,
        deadline,
        got_token: false,
        finish: None,
        usage: None,
        queued: VecDeque::new(),
        held: None,
        done: false,
        end_sent: false,
    };
    stream::unfold(reader, |mut reader| async move {
        let item = reader.next().await?;
        Some((item, reader))
    })
    .boxed()
}

impl<D: Dialect> Reader<D> {
    async fn next(&mut self) -> Option<Result<WorkerChunk, WorkerError>> {
        if let Some(chunk) = self.queued.pop_front() {
            return Some(Ok(chunk));
        }
        while !self.done {
            let wait = if self.got_token {
                self.timeouts.between_tokens
            } else {
                self.timeouts.first_token
            };
            let limit = earliest(wait.map(|w| Instant::now() + w), self.deadline);
            let next = match limit {
                Some(at) => match tokio::time::timeout_at(at, self.read_event()).await {
                    Ok(next) => next,
                    Err(_) => return Some(Err(self.fail(self.timeout_message(wait)))),
                },
                None => self.read_event().await,
            };
            match next {
                Ok(true) => {}
                // Fine after a finish reason (some servers omit their end marker), a cut otherwise.
                Ok(false) if self.finish.is_some() => break,
                Ok(false) => {
                    return Some(Err(
                        self.fail("the stream ended before the answer was complete".into())
                    ));
                }
                Err(message) => return Some(Err(self.fail(message))),
            }
            let parsed = match self.dialect.parse(self.decoder.data()) {
                Ok(parsed) => parsed,
                Err(message) => return Some(Err(self.fail(message))),
            };
            if parsed.usage.is_some() {
                self.usage = parsed.usage;
            }
            if parsed.finish.is_some() {
                self.finish = parsed.finish;
            }
            self.done = parsed.done;
            let token = parsed.token.filter(|t| !t.is_empty());
            let extra = match parsed.extra {
                Some(alone) if token.is_none() && alone.message.is_empty() && alone.choice.is_empty() => {
                    self.hold(*alone);
                    None
                }
                extra => extra,
            };
            if token.is_none() && extra.is_none() {
                continue;
            }
            // Tool-call deltas are output too: they count for the token timeouts, and once
            // any output went out a failure can no longer be retried elsewhere.
            self.got_token = true;
            // Held fields, then the token, then its own extras; only the ones after the first
            // are queued, so a plain token costs no allocation.
            let mut out = (self.held.take().map(WorkerChunk::Passthrough).into_iter())
                .chain(token.map(WorkerChunk::Token))
                .chain(extra.map(WorkerChunk::Passthrough));
            let first = out.next();
            self.queued.extend(out);
            return first.map(Ok);
        }
        // The end was seen (its own output, if any, went out above): say how it ended, once,
        // after top-level fields that never found output to go with.
        if self.end_sent {
            return None;
        }
        self.end_sent = true;
        let finish = WorkerChunk::Finish {
            reason: self.finish.unwrap_or_default(),
            usage: self.usage,
        };
        match self.held.take() {
            Some(held) => {
                self.queued.push_back(finish);
                Some(Ok(WorkerChunk::Passthrough(held)))
            }
            None => Some(Ok(finish)),
        }
    }

    /// Reads the body until the bytes held make a whole event (true: `decoder.data()` is its
    /// data) or the body ends (false).
    async fn read_event(&mut self) -> Result<bool, String> {
        loop {
            if self.decoder.next_event().map_err(|e| e.to_string())? {
                return Ok(true);
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.decoder.push(&bytes),
                Some(Err(e)) => return Err(format!("the stream broke: {e}")),
                None => return Ok(false),
            }
        }
    }

    /// Keeps top-level fields for the next output; the latest value of each wins.
    fn hold(&mut self, fields: Passthrough) {
        match &mut self.held {
            Some(held) => held.merge(fields),
            None => self.held = Some(Box::new(fields)),
        }
    }

    fn timeout_message(&self, wait: Option<Duration>) -> String {
        let before_deadline = self.deadline.is_none_or(|d| Instant::now() < d);
        match wait {
            Some(w) if before_deadline && !self.got_token => {
                format!("no first token within {} ms", w.as_millis())
            }
            Some(w) if before_deadline => format!("no token for {} ms", w.as_millis()),
            _ => "the call took longer than its total timeout".into(),
        }
    }

    /// Ends the stream with an error naming the backend. Before the first token it may be
    /// retried elsewhere; after it, the caller has seen output and the pipeline ends the stream.
    fn fail(&mut self, message: String) -> WorkerError {
        self.done = true;
        self.end_sent = true;
        WorkerError {
            retryable: !self.got_token,
            ..WorkerError::new(format!("{}: {message}", self.backend))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::stream::{self, StreamExt};
    use http_body_util::Either;

    use super::*;
    use crate::openai::stream::OpenAiDialect;

    const OPENING: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"system_fingerprint\":\"fp_1\"}\n\n";
    const TOKEN: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"system_fingerprint\":\"fp_1\"}\n\n";
    const FINISH: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";

    /// A relayed SSE body of `events`, staying open afterwards when `then_silent`; first token
    /// within 1 s, 5 s between tokens, 10 s in all.
    fn relayed(events: &[&'static str], then_silent: bool) -> TokenStream {
        let pieces: Vec<_> = events.iter().map(|e| e.as_bytes()).collect();
        relayed_pieces(&pieces, then_silent)
    }

    /// As [`relayed`], for a body arriving in `pieces` cut anywhere (inside a character too).
    fn relayed_pieces(pieces: &[&'static [u8]], then_silent: bool) -> TokenStream {
        let chunks: Vec<_> = pieces
            .iter()
            .map(|e| Ok::<_, std::io::Error>(Bytes::from_static(e)))
            .collect();
        let chunks = stream::iter(chunks);
        let body = if then_silent {
            reqwest::Body::wrap_stream(chunks.chain(stream::pending()))
        } else {
            reqwest::Body::wrap_stream(chunks)
        };
        let timeouts = Timeouts {
            connect: None,
            first_token: Some(Duration::from_secs(1)),
            between_tokens: Some(Duration::from_secs(5)),
            total: None,
        };
        let response = http::Response::new(Either::Right(body));
        let deadline = Instant::now() + Duration::from_secs(10);
        relay(
            response,
            OpenAiDialect::default(),
            "up".into(),
            timeouts,
            Some(deadline),
        )
    }

    fn fingerprint(chunk: &WorkerChunk) -> Option<&serde_json::Value> {
        match chunk {
            WorkerChunk::Passthrough(extra) => extra.response.get("system_fingerprint"),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_opening_chunk_without_text_keeps_the_call_retryable_and_the_first_token_limit() {
        let mut tokens = relayed(&[OPENING], true);
        let error = tokens.next().await.unwrap().unwrap_err();
        assert!(error.retryable, "{error:?}");
        assert_eq!(error.message, "up: no first token within 1000 ms");
        assert!(tokens.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_a_token_ends_the_stream_and_is_not_retryable() {
        let mut tokens = relayed(&[OPENING, TOKEN], true);
        assert!(fingerprint(&tokens.next().await.unwrap().unwrap()).is_some());
        assert!(matches!(tokens.next().await, Some(Ok(WorkerChunk::Token(_)))));
        let start = Instant::now();
        let error = tokens.next().await.unwrap().unwrap_err();
        assert_eq!(error.message, "up: no token for 5000 ms");
        assert!(!error.retryable);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_going_past_the_total_limit_is_cut_there() {
        // A token every 4 s: never silent for 5 s, but past 10 s in all.
        let start = Instant::now();
        let body = stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Some((
                Ok::<_, std::io::Error>(Bytes::from_static(TOKEN.as_bytes())),
                n + 1,
            ))
        });
        let timeouts = Timeouts {
            connect: None,
            first_token: Some(Duration::from_secs(5)),
            between_tokens: Some(Duration::from_secs(5)),
            total: Some(Duration::from_secs(10)),
        };
        let response = http::Response::new(Either::Right(reqwest::Body::wrap_stream(body)));
        let deadline = Instant::now() + Duration::from_secs(10);
        let chunks: Vec<_> = relay(
            response,
            OpenAiDialect::default(),
            "up".into(),
            timeouts,
            Some(deadline),
        )
        .collect()
        .await;
        let (last, tokens) = chunks.split_last().unwrap();
        let error = last.as_ref().unwrap_err();
        assert_eq!(error.message, "up: the call took longer than its total timeout");
        assert!(!error.retryable);
        // Tokens came at 4 s and 8 s.
        assert_eq!(tokens.len(), 2, "{tokens:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn held_top_level_fields_go_out_just_before_the_first_output() {
        let chunks: Vec<_> = relayed(&[OPENING, TOKEN, FINISH], false)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert_eq!(fingerprint(&chunks[0]), Some(&serde_json::json!("fp_1")));
        assert!(matches!(&chunks[1], WorkerChunk::Token(t) if t == "Hi"));
        assert!(matches!(
            chunks[2],
            WorkerChunk::Finish {
                reason: FinishReason::Stop,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn top_level_fields_of_an_empty_answer_still_reach_the_caller() {
        let chunks: Vec<_> = relayed(&[OPENING, FINISH], false)
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert_eq!(fingerprint(&chunks[0]), Some(&serde_json::json!("fp_1")));
        assert!(matches!(
            chunks[1],
            WorkerChunk::Finish {
                reason: FinishReason::Stop,
                ..
            }
        ));
    }

    /// A leading byte order mark, whole or cut across pieces, is skipped (the SSE parser used
    /// before panicked on it, slicing inside the mark).
    #[tokio::test(start_paused = true)]
    async fn a_byte_order_mark_is_skipped_even_when_cut_up() {
        let bom_then_token: &[&[u8]] =
            &[b"\xEF\xBB\xBFdata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"];
        let cut_in_the_mark: &[&[u8]] = &[
            b"\xEF",
            b"\xBB",
            b"\xBFdata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        ];
        for pieces in [bom_then_token, cut_in_the_mark] {
            let pieces: Vec<_> = pieces.iter().copied().chain([FINISH.as_bytes()]).collect();
            let chunks: Vec<_> = relayed_pieces(&pieces, false).map(Result::unwrap).collect().await;
            assert!(
                matches!(&chunks[0], WorkerChunk::Token(t) if t == "Hi"),
                "{chunks:?}"
            );
            assert!(matches!(
                chunks[1],
                WorkerChunk::Finish {
                    reason: FinishReason::Stop,
                    ..
                }
            ));
        }
    }

    /// The format allows one mark: a second one starts the first line's field name, which makes
    /// that line an unknown field, ignored.
    #[tokio::test(start_paused = true)]
    async fn a_second_byte_order_mark_is_part_of_the_first_line() {
        let pieces: &[&[u8]] = &[
            "\u{feff}\u{feff}data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n".as_bytes(),
            FINISH.as_bytes(),
        ];
        let chunks: Vec<_> = relayed_pieces(pieces, false).map(Result::unwrap).collect().await;
        assert!(
            matches!(
                chunks[..],
                [WorkerChunk::Finish {
                    reason: FinishReason::Stop,
                    ..
                }]
            ),
            "{chunks:?}"
        );
    }
}
