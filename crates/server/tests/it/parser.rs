//! No input makes the request parser panic: arbitrary bytes and arbitrary JSON either parse or
//! give a 400 with a message.

use orchestrator_server::api::body::parse_json;
use orchestrator_server::api::request::GenerationRequest;
use proptest::prelude::*;
use serde_json::{Value, json};

fn check(bytes: &[u8]) {
    match parse_json::<GenerationRequest>(bytes) {
        Ok(request) => {
            if let Err(e) = request.into_chat() {
                assert_eq!(e.status, 400);
                assert!(!e.message.is_empty());
            }
        }
        Err(e) => {
            assert_eq!(e.status, 400);
            assert!(!e.message.is_empty());
        }
    }
    if let Ok(request) = parse_json::<GenerationRequest>(bytes)
        && let Err(e) = request.into_completion()
    {
        assert_eq!(e.status, 400);
    }
}

/// Arbitrary JSON values, biased towards the request's own field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,8}".prop_map(Value::from),
        prop_oneof![Just("user"), Just("system"), Just("text"), Just("echo")].prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop_oneof![
            Just("model".to_string()),
            Just("messages".to_string()),
            Just("role".to_string()),
            Just("content".to_string()),
            Just("type".to_string()),
            Just("text".to_string()),
            Just("stop".to_string()),
            Just("prompt".to_string()),
            Just("n".to_string()),
            Just("max_tokens".to_string()),
            Just("stream_options".to_string()),
            ".{0,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        check(value.to_string().as_bytes());
    }

    #[test]
    fn near_valid_requests_never_panic(
        messages in json_value(),
        stop in json_value(),
        temperature in json_value(),
    ) {
        let body = json!({"model": "echo", "messages": messages, "stop": stop, "temperature": temperature});
        check(body.to_string().as_bytes());
    }
}
