//! OpenAI answers from upstream: a whole (non-streamed) answer through `answer_stream`, and the
//! same bytes as one stream chunk through `OpenAiDialect::parse`. Both must hand on only fields
//! they do not read themselves and no empty ones, and where both read the JSON they must agree on
//! the text, the finish reason and the usage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator_backends::openai::{OpenAiDialect, answer_stream};
use orchestrator_backends::sse::Dialect;
use orchestrator_fuzz::{
    BACKEND, assert_backend_error, assert_openai_fields, assert_openai_stream_fields, assert_shape, drain,
};
use tokio_prompt_orchestrator::WorkerChunk;

fuzz_target!(|body: &[u8]| {
    let answer = answer_stream(BACKEND, body).map(drain);
    match &answer {
        Ok(items) => {
            assert_shape(items);
            assert_openai_stream_fields(items);
        }
        Err(error) => assert_backend_error(error),
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(chunk) = OpenAiDialect::default().parse(text) else {
        return;
    };
    assert!(chunk.token.as_ref().is_none_or(|t| !t.is_empty()), "{chunk:?}");
    if let Some(extra) = &chunk.extra {
        assert_openai_fields(extra);
    }
    if chunk.done {
        return; // `[DONE]`, which is not an answer.
    }
    let items = answer.expect("a chunk the stream reader takes is an answer too");
    let token = items.iter().find_map(|i| match i {
        Ok(WorkerChunk::Token(t)) => Some(t),
        _ => None,
    });
    assert_eq!(token, chunk.token.as_ref());
    let Some(Ok(WorkerChunk::Finish { reason, usage })) = items.last() else {
        unreachable!("checked by assert_shape");
    };
    assert_eq!(*reason, chunk.finish.unwrap_or_default());
    assert_eq!(*usage, chunk.usage);
});
