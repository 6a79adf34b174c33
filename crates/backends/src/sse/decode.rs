//! Server-sent events read from an upstream's body, as the format defines them: lines end with
//! LF, CR or CRLF (even split across pieces), `data:` lines of one event are joined with `\n`, an
//! empty line dispatches the event, comments and other fields are skipped, one byte order mark may
//! start the stream.
//!
//! Written for the relay's hot path: a line is found with `memchr`, an event's data is gathered
//! in one buffer that is reused, so a usual event (one `data:` line) costs a copy of its bytes
//! and no allocation.

use bytes::{Buf, BytesMut};

/// A UTF-8 byte order mark, which the format allows once, at the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// At most this many bytes of one line or one event's data are held: an upstream that never ends
/// a line must not use memory without bound.
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// Why a stream cannot be read as events.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    NotUtf8,
    TooLong,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::NotUtf8 => f.write_str("the stream is not UTF-8"),
            DecodeError::TooLong => write!(f, "an event is longer than {MAX_EVENT_BYTES} bytes"),
        }
    }
}

#[derive(Default)]
pub struct Decoder {
    /// Bytes received and not yet read as lines.
    pending: BytesMut,
    event: Event,
    /// The start of the stream has been seen (and its mark, if any, skipped).
    started: bool,
    /// The last line ended with CR: an LF that follows belongs to it.
    after_cr: bool,
}

/// The event being read.
#[derive(Default)]
struct Event {
    /// Its `data` lines, each followed by `\n`.
    data: String,
    /// Whether it has a `data` field (an event of `data:` alone is one empty line).
    has_data: bool,
    /// It was handed out: its data goes before the next line is read.
    dispatched: bool,
}

impl Decoder {
    /// Takes the next piece of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Reads the next whole event, if the bytes received hold one; [`data`](Self::data) then
    /// gives its data, until the next call.
    ///
    /// # Errors
    /// When a line is not UTF-8, or an event outgrows [`MAX_EVENT_BYTES`].
    pub fn next_event(&mut self) -> Result<bool, DecodeError> {
        if !self.started {
            if self.pending.len() < BOM.len() && BOM.starts_with(&self.pending) {
                return Ok(false);
            }
            if self.pending.starts_with(BOM) {
                self.pending.advance(BOM.len());
            }
            self.started = true;
        }
        if self.event.dispatched {
            // Handed out last time; the buffer is kept for the next event's data.
            self.event.data.clear();
            self.event.has_data = false;
            self.event.dispatched = false;
        }
        loop {
            if self.after_cr {
                match self.pending.first() {
                    // The LF may still come.
                    None => return Ok(false),
                    Some(b'\n') => self.pending.advance(1),
                    Some(_) => {}
                }
                self.after_cr = false;
            }
            let Some(end) = memchr::memchr2(b'\n', b'\r', &self.pending) else {
                if self.pending.len() > MAX_EVENT_BYTES {
                    return Err(DecodeError::TooLong);
                }
                return Ok(false);
            };
            self.after_cr = self.pending[end] == b'\r';
            let line = std::str::from_utf8(&self.pending[..end]).map_err(|_| DecodeError::NotUtf8)?;
            let dispatch = self.event.line(line)?;
            self.pending.advance(end + 1);
            if dispatch {
                // One newline per `data:` line was added: the last is not part of the data.
                self.event.data.pop();
                self.event.dispatched = true;
                return Ok(true);
            }
        }
    }

    /// The data of the event [`next_event`](Self::next_event) read.
    pub fn data(&self) -> &str {
        &self.event.data
    }
}

impl Event {
    /// Reads one line; whether it dispatches the event.
    fn line(&mut self, line: &str) -> Result<bool, DecodeError> {
        if line.is_empty() {
            return Ok(self.has_data);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        // `event`, `id` and `retry` mean nothing to a relay; comments have an empty field name.
        if field == "data" {
            if self.data.len() + value.len() >= MAX_EVENT_BYTES {
                return Err(DecodeError::TooLong);
            }
            self.data.push_str(value);
            self.data.push('\n');
            self.has_data = true;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event's data in `body`, fed in pieces of `size` bytes.
    fn events(body: &[u8], size: usize) -> Result<Vec<String>, DecodeError> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for piece in body.chunks(size.max(1)) {
            decoder.push(piece);
            while decoder.next_event()? {
                out.push(decoder.data().to_owned());
            }
        }
        Ok(out)
    }

    fn all_ways(body: &[u8]) -> Vec<String> {
        let whole = events(body, body.len()).unwrap();
        for size in 1..body.len() {
            assert_eq!(events(body, size).unwrap(), whole, "in pieces of {size}");
        }
        whole
    }

    #[test]
    fn events_are_read_whatever_the_pieces() {
        let body = b"data: one\n\ndata: {\"a\":1}\n\n: a comment\n\nevent: x\nid: 7\ndata: two\n\n";
        assert_eq!(all_ways(body), ["one", "{\"a\":1}", "two"]);
    }

    #[test]
    fn data_lines_join_and_line_ends_may_be_crlf_or_cr() {
        assert_eq!(
            all_ways(b"data: a\r\ndata:b\r\n\r\ndata: c\rdata: d\r\r"),
            ["a\nb", "c\nd"]
        );
        assert_eq!(all_ways(b"data\n\ndata:\ndata:\n\n"), ["", "\n"]);
    }

    #[test]
    fn an_event_without_data_or_not_ended_is_not_dispatched() {
        assert_eq!(
            all_ways(b"event: x\n\n: ping\n\ndata: late"),
            Vec::<String>::new()
        );
        assert_eq!(all_ways(b"\n\n\ndata: x\n\n"), ["x"]);
    }

    #[test]
    fn one_byte_order_mark_is_skipped_even_cut_up() {
        assert_eq!(all_ways(b"\xEF\xBB\xBFdata: x\n\n"), ["x"]);
        // A second one starts the first line's field name: an unknown field.
        assert_eq!(
            all_ways("\u{feff}\u{feff}data: x\n\ndata: y\n\n".as_bytes()),
            ["y"]
        );
    }

    #[test]
    fn characters_cut_across_pieces_are_whole_and_bad_bytes_are_an_error() {
        assert_eq!(all_ways("data: héllo ✓\n\n".as_bytes()), ["héllo ✓"]);
        assert_eq!(events(b"data: \xFF\n\n", 64), Err(DecodeError::NotUtf8));
    }

    #[test]
    fn a_line_that_never_ends_is_bounded() {
        let mut decoder = Decoder::default();
        let piece = vec![b'a'; 1024 * 1024];
        let mut result = Ok(false);
        for _ in 0..=MAX_EVENT_BYTES / piece.len() {
            decoder.push(&piece);
            result = decoder.next_event();
        }
        assert_eq!(result, Err(DecodeError::TooLong));
    }
}
