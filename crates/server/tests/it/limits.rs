//! Rate limits per API key: requests per second and tokens per minute, with OpenAI's
//! `x-ratelimit-*` headers and 429 + `Retry-After` over a limit.

use orchestrator_server::Config;
use serde_json::{Value, json};

use crate::support::{chat_body, client, expect_error, serve, sha256_hex};

const CONFIG: &str = r#"
    [auth]
    rate_limit = { tokens_per_minute = 10 }
    [[auth.keys]]
    name = "burst"
    sha256 = "c816bfb6d67df2c246b6005193dd9511c3795c83d3434dda082c5fe62da09586" # sk-burst
    rate_limit = { requests_per_second = 1, burst = 2 }
    [[auth.keys]]
    name = "tokens"
    sha256 = "7411f7d09ba991bdffff5a38d21777b41b6b3a62303607d9004ce348658d7fdb" # sk-tokens
    [[auth.keys]]
    name = "streams"
    sha256 = "f7cf6eab564f0e16af6453ca0518987642d936a8281cea9c3730d34099f66e41" # sk-streams
    [[backends]]
    kind = "echo"
    name = "echo"
    [[models]]
    name = "echo"
    backends = ["echo"]
"#;

async fn gateway() -> String {
    serve(Config::parse(CONFIG, "limits.toml").unwrap()).await
}

async fn chat(base: &str, key: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> &'r str {
    response.headers()[name].to_str().unwrap()
}

#[tokio::test]
async fn requests_over_the_burst_get_429_with_retry_after() {
    let base = gateway().await;
    for remaining in ["1", "0"] {
        let response = chat(&base, "sk-burst", chat_body("echo", "hi")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "1");
        assert_eq!(header(&response, "x-ratelimit-remaining-requests"), remaining);
    }
    let refused = chat(&base, "sk-burst", chat_body("echo", "hi")).await;
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    assert!(header(&refused, "x-ratelimit-reset-requests").ends_with('s'));
    assert_eq!(header(&refused, "retry-after"), "1");
    let error = expect_error(refused, 429).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("requests"), Some("rate_limit_exceeded"))
    );
    // Another key has its own budget.
    assert_eq!(
        chat(&base, "sk-tokens", chat_body("echo", "hi")).await.status(),
        200
    );
}

#[tokio::test]
async fn tokens_used_are_charged_and_a_key_in_debt_waits() {
    let base = gateway().await;
    let long = "one two three four five six seven eight nine ten eleven twelve";
    let first = chat(&base, "sk-tokens", chat_body("echo", long)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "10");
    let body: Value = first.json().await.unwrap();
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 10);
    let refused = chat(&base, "sk-tokens", chat_body("echo", "hi")).await;
    assert_eq!(header(&refused, "x-ratelimit-remaining-tokens"), "0");
    let retry: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!(
        retry > 1,
        "the debt takes a while to pay off at 10 tokens a minute: {retry}"
    );
    let error = expect_error(refused, 429).await;
    assert_eq!(error["type"], "tokens");
}

#[tokio::test]
async fn streamed_tokens_are_charged_when_the_stream_completes() {
    let base = gateway().await;
    let mut body = chat_body("echo", "one two three four five six seven eight nine ten eleven");
    body["stream"] = json!(true);
    let stream = chat(&base, "sk-streams", body).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(header(&stream, "x-ratelimit-limit-tokens"), "10");
    stream.text().await.unwrap();
    let refused = chat(&base, "sk-streams", chat_body("echo", "hi")).await;
    expect_error(refused, 429).await;
}

/// sk-budget's token budget: 60 tokens a day.
const BUDGET: &str = r#"
    [[auth.keys]]
    name = "budget"
    sha256 = "SHA256"
    rate_limit = { token_budget = 60 }
    [[backends]]
    kind = "echo"
    name = "echo"
    [[models]]
    name = "echo"
    backends = ["echo"]
"#;

#[tokio::test]
async fn a_token_budget_is_reserved_before_the_answer_and_settled_with_the_usage() {
    let config = BUDGET.replace("SHA256", &sha256_hex("sk-budget"));
    let base = serve(Config::parse(&config, "budget.toml").unwrap()).await;
    let ask = |stream: bool| {
        let mut body = chat_body("echo", "hello there");
        body["max_tokens"] = json!(10);
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        chat(&base, "sk-budget", body)
    };
    // Larger than the whole budget: never possible, so not a 429.
    let mut huge = chat_body("echo", "hi");
    huge["max_tokens"] = json!(1000);
    let refused = chat(&base, "sk-budget", huge).await;
    let error = expect_error(refused, 400).await;
    assert_eq!(error["param"], "max_tokens", "{error}");

    let mut used = 0;
    let mut answered = 0;
    loop {
        let response = ask(answered % 2 == 1).await;
        if response.status() == 429 {
            assert!(header(&response, "retry-after").parse::<u64>().unwrap() >= 1);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["type"], "insufficient_quota");
            assert_eq!(body["error"]["code"], "insufficient_quota");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.starts_with("This API key's token budget (60 tokens per 24 h)"),
                "{message}"
            );
            break;
        }
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        // Streams run to their end: the budget is decided before the first byte.
        let usage = if answered % 2 == 1 {
            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
            let last = text.lines().rfind(|l| l.starts_with("data: {")).unwrap();
            serde_json::from_str::<Value>(&last[6..]).unwrap()["usage"].clone()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
        };
        used += usage["total_tokens"].as_u64().unwrap();
        answered += 1;
        assert!(answered < 60, "the budget never ran out");
    }
    // Settled with the real usage, each request cost less than its reservation: more requests
    // ran than the budget holds reservations, and no more tokens than the budget were used.
    assert!(used <= 60, "{used} tokens used of 60");
    assert!(
        answered > 60 / 18,
        "{answered} answered: reservations were not settled"
    );
}
