//! OpenAI request bodies as the gateway reads them: `parse_json` (what `POST
//! /v1/chat/completions` and `/v1/completions` do with the bytes), then the checks of either
//! endpoint. An accepted request must satisfy every check; a refused one is a 400 that says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestrator_fuzz::{assert_accepted, assert_refused};
use orchestrator_server::api::body::parse_json;
use orchestrator_server::api::request::GenerationRequest;

fuzz_target!(|body: &[u8]| {
    for chat in [true, false] {
        let built = parse_json::<GenerationRequest>(body).and_then(|request| match chat {
            true => request.into_chat(),
            false => request.into_completion(),
        });
        match built {
            Ok((request, delivery)) => assert_accepted(&request, &delivery, chat),
            Err(error) => assert_refused(&error),
        }
    }
});
