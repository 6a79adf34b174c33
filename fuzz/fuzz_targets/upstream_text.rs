//! The small readers of what an upstream sends besides answers: vLLM's Prometheus `/metrics`
//! (`waiting_requests`), a `Retry-After` header (`retry_after`, never more than
//! `MAX_RETRY_AFTER`) and an error body (`error_message`).
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use orchestrator_backends::http::{MAX_RETRY_AFTER, error_message, retry_after};
use orchestrator_backends::openai::vllm::waiting_requests;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = waiting_requests(&text);
    // A fixed clock keeps a run reproducible.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Some(wait) = retry_after(&text, now) {
        assert!(wait <= MAX_RETRY_AFTER, "{wait:?}");
    }
    let _ = error_message(data);
});
