//! The upstream SSE relay (`orchestrator_backends::sse::relay`) with the OpenAI or the llama.cpp
//! dialect. The bytes after a five-byte header are the upstream's body; the header picks the
//! dialect (bit 0 of its first byte) and two cut points (little-endian `u16`s, modulo the body's
//! length). The body relayed whole and the body relayed in three pieces, cut there, must give the
//! same items, since TCP may cut a stream anywhere; and the items must have a token stream's shape.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use orchestrator_backends::llamacpp::LlamaDialect;
use orchestrator_backends::openai::OpenAiDialect;
use orchestrator_fuzz::{Item, assert_openai_stream_fields, assert_shape, relay};

fuzz_target!(|data: &[u8]| {
    let Some((header, body)) = data.split_first_chunk::<5>() else {
        return;
    };
    let cut = |at: [u8; 2]| usize::from(u16::from_le_bytes(at)) % (body.len() + 1);
    let (a, b) = (cut([header[1], header[2]]), cut([header[3], header[4]]));
    let (a, b) = (a.min(b), a.max(b));
    let whole = vec![Bytes::copy_from_slice(body)];
    let pieces = [&body[..a], &body[a..b], &body[b..]]
        .map(Bytes::copy_from_slice)
        .to_vec();
    let openai = header[0] & 1 == 0;
    let run = |pieces| -> Vec<Item> {
        match openai {
            true => relay(pieces, OpenAiDialect::default()),
            false => relay(pieces, LlamaDialect),
        }
    };
    let (once, cut_up) = (run(whole), run(pieces));
    assert_eq!(once, cut_up, "cut at {a} and {b}");
    assert_shape(&once);
    if openai {
        assert_openai_stream_fields(&once);
    }
});
