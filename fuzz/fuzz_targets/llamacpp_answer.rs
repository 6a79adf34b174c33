//! llama.cpp's native `/completion` answers: a whole answer through `llamacpp::answer_stream`,
//! and the same bytes as one stream piece through `LlamaDialect::parse`. The token stream must
//! have its shape; a piece is the end exactly when it says `stop`, and only the end has counts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator_backends::llamacpp::{LlamaDialect, answer_stream};
use orchestrator_backends::sse::Dialect;
use orchestrator_fuzz::{BACKEND, assert_backend_error, assert_shape, drain};

fuzz_target!(|body: &[u8]| {
    match answer_stream(BACKEND, body) {
        Ok(tokens) => assert_shape(&drain(tokens)),
        Err(error) => assert_backend_error(&error),
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if let Ok(piece) = LlamaDialect.parse(text) {
        assert!(piece.token.as_ref().is_none_or(|t| !t.is_empty()), "{piece:?}");
        assert_eq!(piece.done, piece.finish.is_some(), "{piece:?}");
        assert!(piece.usage.is_none() || piece.done, "{piece:?}");
    }
});
