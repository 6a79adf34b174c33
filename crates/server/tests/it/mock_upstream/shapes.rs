//! The mock upstream's answers in the shapes of the OpenAI-compatible API and llama-server's
//! native API: fields, usage, limits, stream frames, and slots.

use orchestrator_mock::Behaviour;
use serde_json::{Value, json};

use super::{four_tokens, frames, mock, parse, post, wait};
use crate::support::client;

#[tokio::test]
async fn chat_answers_with_the_openai_shape_and_usage() {
    let mock = mock(four_tokens()).await;
    let messages = json!([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two  three"}]},
    ]);
    let response = post(
        &mock,
        "/v1/chat/completions",
        json!({"model": "m-1", "messages": messages}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"), "{body}");
    assert!(body["created"].as_u64().unwrap() > 0);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "m-1");
    assert_eq!(body["system_fingerprint"], "fp_mock");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "tok0 tok1 tok2 tok3");
    assert_eq!(choice["finish_reason"], "stop");
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9});
    assert_eq!(body["usage"], usage);

    let limited = json!({"model": "m", "messages": messages, "max_completion_tokens": 2, "max_tokens": 3});
    let body: Value = post(&mock, "/v1/chat/completions", limited)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "tok0 tok1");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    assert_eq!(mock.stats().chat_completions, 2);
}

#[tokio::test]
async fn chat_streams_role_tokens_finish_usage_and_done() {
    let mock = mock(four_tokens()).await;
    let body = json!({
        "model": "m", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 3,
        "messages": [{"role": "user", "content": "a b"}],
    });
    let data = frames(post(&mock, "/v1/chat/completions", body).await).await;
    assert_eq!(data.len(), 1 + 3 + 1 + 1 + 1, "{data:#?}");
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| parse(d)).collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert_eq!(chunk["model"], "m");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2");
    assert_eq!(chunks[3]["usage"], Value::Null);
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[5]["choices"], json!([]));
    let usage = json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5});
    assert_eq!(chunks[5]["usage"], usage);

    let plain = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "a"}]});
    let data = frames(post(&mock, "/v1/chat/completions", plain).await).await;
    assert_eq!(data.len(), 1 + 4 + 1 + 1);
    assert!(
        parse(&data[1]).get("usage").is_none(),
        "no usage field without include_usage"
    );
    assert_eq!(parse(&data[5])["choices"][0]["finish_reason"], "stop");
    let stats = wait(&mock, |s| s.streams_completed == 2).await;
    assert_eq!((stats.streams_started, stats.streams_abandoned), (2, 0));
}

#[tokio::test]
async fn completions_answer_and_stream_text() {
    let mock = mock(four_tokens()).await;
    let body = json!({"model": "c", "prompt": ["a b", "c"], "max_tokens": 2});
    let body: Value = post(&mock, "/v1/completions", body).await.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"), "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "tok0 tok1");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );

    let body =
        json!({"model": "c", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}});
    let data = frames(post(&mock, "/v1/completions", body).await).await;
    assert_eq!(
        data.len(),
        4 + 1 + 1 + 1,
        "no role chunk in completions: {data:#?}"
    );
    let text: String = data[..4]
        .iter()
        .map(|d| parse(d)["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3");
    assert_eq!(parse(&data[4])["choices"][0]["finish_reason"], "stop");
    assert_eq!(parse(&data[5])["usage"]["total_tokens"], 5);
    assert_eq!(data[6], "[DONE]");
    assert_eq!(mock.stats().completions, 2);
}

#[tokio::test]
async fn llama_completion_answers_like_llama_server() {
    let mock = mock(four_tokens()).await;
    let body = json!({"prompt": "a b c", "n_predict": 3, "cache_prompt": true, "id_slot": 2});
    let response = post(&mock, "/completion", body).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["content"], "tok0 tok1 tok2");
    assert_eq!(body["stop"], true);
    assert_eq!(body["id_slot"], 2);
    assert_eq!(body["tokens_predicted"], 3);
    assert_eq!(body["tokens_evaluated"], 3);
    assert_eq!(body["stop_type"], "limit");
    assert_eq!(body["model"], "mock");

    let body = json!({"prompt": "a", "stream": true, "id_slot": 1});
    let data = frames(post(&mock, "/completion", body).await).await;
    assert_eq!(data.len(), 4 + 1, "no [DONE] in llama.cpp streams: {data:#?}");
    for (i, frame) in data[..4].iter().enumerate() {
        let partial = parse(frame);
        assert_eq!(
            partial["content"],
            if i == 0 { "tok0".into() } else { format!(" tok{i}") }
        );
        assert_eq!(
            (partial["stop"].clone(), partial["id_slot"].clone()),
            (json!(false), json!(1))
        );
        assert_eq!(partial["tokens_predicted"], i + 1);
    }
    let last = parse(&data[4]);
    assert_eq!(
        (last["stop"].clone(), last["content"].clone()),
        (json!(true), json!(""))
    );
    assert_eq!(
        (last["stop_type"].clone(), last["tokens_predicted"].clone()),
        (json!("eos"), json!(4))
    );

    let health: Value = client()
        .get(mock.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let models: Value = client()
        .get(mock.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "mock");
}

#[tokio::test]
async fn slots_count_the_id_slot_used_and_show_processing() {
    let mock = mock(Behaviour {
        ttft_ms: 60_000,
        ..four_tokens()
    })
    .await;
    for id_slot in [1, 1, 3] {
        let body = json!({"prompt": "p", "id_slot": id_slot, "cache_prompt": true});
        assert_eq!(post(&mock, "/completion", body).await.status(), 200);
    }
    // A stream waiting for its first token keeps its slot busy.
    let held = post(
        &mock,
        "/completion",
        json!({"prompt": "p", "id_slot": 0, "stream": true}),
    )
    .await;
    let slots: Value = client()
        .get(mock.url("/slots"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let served: Vec<_> = slots
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["n_served"].as_u64().unwrap())
        .collect();
    assert_eq!(served, [1, 2, 0, 1]);
    let busy: Vec<_> = slots
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["is_processing"].as_bool().unwrap())
        .collect();
    assert_eq!(busy, [true, false, false, false]);
    assert_eq!(slots[2]["id"], 2);
    let seen = mock.id_slots_seen();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [(0, 1), (1, 2), (3, 1)]);
    drop(held);
    wait(&mock, |s| s.streams_abandoned == 1).await;

    let missing = post(&mock, "/completion", json!({"prompt": "p", "id_slot": 4})).await;
    assert_eq!(missing.status(), 400);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["param"], "id_slot");
}

#[tokio::test]
async fn llama_servers_chat_route_takes_the_slot_and_the_prompt_cache_flag() {
    let mock = mock(four_tokens()).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    for stream in [false, true] {
        let body = json!({"model": "m", "messages": messages, "stream": stream,
                          "id_slot": 2, "cache_prompt": true});
        let response = post(&mock, "/v1/chat/completions", body).await;
        assert_eq!(response.status(), 200);
        if stream {
            let frames = frames(response).await;
            assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
        } else {
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer["choices"][0]["message"]["content"], "tok0 tok1 tok2 tok3");
        }
    }
    assert_eq!(mock.slot_served(), [0, 0, 2, 0]);
    assert_eq!(mock.id_slots_seen().into_iter().collect::<Vec<_>>(), [(2, 2)]);
    // The flag is kept with the body, as the mock has no KV cache to act on it.
    assert_eq!(mock.last_request().unwrap().json()["cache_prompt"], true);

    let body = json!({"model": "m", "messages": messages, "id_slot": 4});
    let missing = post(&mock, "/v1/chat/completions", body).await;
    assert_eq!(missing.status(), 400);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["param"], "id_slot");
}
