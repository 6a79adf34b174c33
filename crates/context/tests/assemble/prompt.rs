//! The `prompt` template: the text completion-style backends get, in the model's chat format.

use orchestrator_context::assemble::{AssembleConfig, TemplateAssembler};
use serde_json::json;
use tokio_prompt_orchestrator::{
    Assembled, Assembler, ChatMessage, InferenceRequest, PipelineError, SessionId,
};

use super::{assembler, assistant, budget_chunks, budget_conversation, chat, count, docs, long_text};

/// ChatML on one line, as in the README. `+%}` keeps the blank line after the tag, which
/// `trim_blocks` would otherwise swallow; the final newline is kept.
const CHATML: &str = "{% if system %}<|im_start|>system\n{{ system }}{% if context +%}\n\n{{ context }}{% endif %}<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n";

/// The same template laid out in a file, as in the module docs, ending with the editor's newline.
const CHATML_FILE: &str = "{% if system %}<|im_start|>system
{{ system }}{% if context +%}

{{ context }}{% endif %}<|im_end|>
{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}<|im_start|>assistant
";

const LLAMA3: &str = "<|begin_of_text|>{% if system %}<|start_header_id|>system<|end_header_id|>\n\n{{ system }}<|eot_id|>{% endif %}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n";

fn two_turns() -> InferenceRequest {
    chat(vec![
        ChatMessage::system("Answer in English."),
        ChatMessage::user("What is shed?"),
        assistant("A request refused when a queue is full."),
        ChatMessage::user("And then?"),
    ])
}

const CHATML_TWO_TURNS: &str = "<|im_start|>system\nYou support Orchestrator.\n\nAnswer in English.\n\n\
    Context:\n[guide.md#2] Queues are bounded and shed when full.<|im_end|>\n\
    <|im_start|>user\nWhat is shed?<|im_end|>\n\
    <|im_start|>assistant\nA request refused when a queue is full.<|im_end|>\n\
    <|im_start|>user\nAnd then?<|im_end|>\n\
    <|im_start|>assistant\n";

#[test]
fn chatml_renders_the_exact_text_of_a_chat() {
    let plain = assembler(json!({"system": "You support {{ meta.product }}."}));
    let templated = assembler(json!({"system": "You support {{ meta.product }}.", "prompt": CHATML}));
    let out = templated.assemble(&two_turns(), &docs()[..1]).unwrap();
    assert_eq!(out.prompt.as_ref(), CHATML_TWO_TURNS);
    let without = plain.assemble(&two_turns(), &docs()[..1]).unwrap();
    assert_eq!(
        out.messages, without.messages,
        "chat backends get the same messages"
    );
    assert_eq!(out.prefix_key, without.prefix_key);
}

#[test]
fn a_template_file_renders_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chatml.j2"), CHATML_FILE).unwrap();
    let config: AssembleConfig = serde_json::from_value(json!({
        "system": "You support {{ meta.product }}.",
        "prompt": {"file": "chatml.j2"},
    }))
    .unwrap();
    let assembler = TemplateAssembler::new(config.with_base_dir(dir.path())).unwrap();
    let out = assembler.assemble(&two_turns(), &docs()[..1]).unwrap();
    assert_eq!(out.prompt.as_ref(), CHATML_TWO_TURNS);
}

#[test]
fn a_completion_request_is_one_user_message() {
    let templated = assembler(json!({"system": "Complete the sentence.", "prompt": CHATML}));
    let request = InferenceRequest::text(SessionId::new("s"), "Backpressure means");
    let out = templated.assemble(&request, &[]).unwrap();
    assert_eq!(out.messages, None);
    assert_eq!(
        out.prompt.as_ref(),
        "<|im_start|>system\nComplete the sentence.<|im_end|>\n\
         <|im_start|>user\nBackpressure means<|im_end|>\n<|im_start|>assistant\n"
    );
    // Nothing else configured: no system block at all.
    let bare = assembler(json!({"prompt": CHATML}));
    let out = bare.assemble(&chat(vec![ChatMessage::user("Hi")]), &[]).unwrap();
    assert_eq!(
        out,
        Assembled {
            messages: None,
            prompt: "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n".into(),
            prompt_templated: true,
            prefix_key: None,
            prompt_tokens: None,
        }
    );
}

#[test]
fn a_model_can_have_its_own_prompt_template() {
    let assembler = assembler(json!({
        "system": "Be brief.",
        "prompt": CHATML,
        "models": {"llama-3": {"prompt": LLAMA3}},
    }));
    let request = chat(vec![ChatMessage::user("Hi")]);
    let chatml = assembler.assemble(&request, &[]).unwrap();
    let llama = assembler
        .assemble(&request.clone().with_model("llama-3"), &[])
        .unwrap();
    assert_eq!(
        chatml.prompt.as_ref(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        llama.prompt.as_ref(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    assert_eq!(
        chatml.prefix_key, llama.prefix_key,
        "the framing is not part of the key"
    );
}

#[test]
fn prompt_template_errors_name_the_template_and_line() {
    let config: AssembleConfig = serde_json::from_value(json!({
        "prompt": "{{ system }}\n{% for m in %}",
        "models": {"gpt-4.1": {"prompt": "{{ sytem }}{{ chunks }}"}},
    }))
    .unwrap();
    let Err(err) = TemplateAssembler::new(config) else {
        panic!("both prompt templates are broken");
    };
    let text = err.to_string();
    assert_eq!(err.problems().len(), 3, "{text}");
    assert!(text.contains("template `prompt` line 2: syntax error"), "{text}");
    assert!(
        text.contains("template `models.\"gpt-4.1\".prompt` uses `chunks`")
            && text.contains("gets that block, rendered, as `context`"),
        "{text}"
    );
    assert!(
        text.contains("template `models.\"gpt-4.1\".prompt` uses `sytem`")
            && text.contains("`system`, `tools`, `context`, `messages`, `model` and `meta`"),
        "{text}"
    );
    // The prompt template's variables are its own.
    let config: AssembleConfig = serde_json::from_value(json!({"system": "{{ context }}"})).unwrap();
    let Err(err) = TemplateAssembler::new(config) else {
        panic!("`context` is not a system template variable");
    };
    assert!(
        err.to_string().contains("exist only in the `prompt` template"),
        "{err}"
    );
}

#[test]
fn an_undefined_field_fails_the_request_naming_the_prompt_template() {
    let assembler = assembler(json!({"prompt": "{% for m in messages %}\n{{ m.name }}{% endfor %}"}));
    match assembler.assemble(&chat(vec![ChatMessage::user("Hi")]), &[]) {
        Err(PipelineError::Assembly { message }) => {
            assert!(
                message.starts_with("template `prompt` line 2: undefined value"),
                "{message}"
            );
        }
        other => panic!("expected an assembly error, got {other:?}"),
    }
}

#[test]
fn the_prefix_key_ignores_the_prompt_template() {
    let plain = assembler(json!({"system": "Use tools."}));
    let templated = assembler(json!({"system": "Use tools.", "prompt": CHATML}));
    let mut with_tools = two_turns();
    with_tools.extra.insert(
        "tools".into(),
        tokio_prompt_orchestrator::raw(&json!([{"type": "function"}])),
    );
    let text = InferenceRequest::text(SessionId::new("s"), "Backpressure means");
    for request in [two_turns(), with_tools, text] {
        let a = plain.assemble(&request, &docs()).unwrap();
        let b = templated.assemble(&request, &docs()).unwrap();
        assert!(a.prefix_key.is_some());
        assert_eq!(a.prefix_key, b.prefix_key);
        assert_ne!(a.prompt, b.prompt);
    }
}

// ---------------------------------------------------------------------------------------------
// Budget: counted on the rendered text

fn with_window(window: usize) -> TemplateAssembler {
    assembler(json!({
        "system": "You are terse.",
        "prompt": CHATML,
        "context_window": window,
        "reserve_output_tokens": 100,
    }))
}

/// Assembles with a window of `window`, checking that the count is exactly the prompt's.
fn fitted(
    window: usize,
    request: &InferenceRequest,
    chunks: &[tokio_prompt_orchestrator::RetrievedChunk],
) -> Assembled {
    let out = with_window(window).assemble(request, chunks).unwrap();
    assert_eq!(out.prompt_tokens.unwrap() as usize, count(&out.prompt));
    assert!(out.prompt_tokens.unwrap() as usize + 100 <= window);
    out
}

fn tokens_of(request: &InferenceRequest, chunks: &[tokio_prompt_orchestrator::RetrievedChunk]) -> usize {
    fitted(1_000_000, request, chunks).prompt_tokens.unwrap() as usize
}

fn sources(out: &Assembled) -> Vec<&'static str> {
    ["a.md", "b.md", "c.md", "d.md"]
        .into_iter()
        .filter(|source| out.prompt.contains(&format!("[{source}#1]")))
        .collect()
}

#[test]
fn the_count_is_the_rendered_texts_and_an_exact_fit_drops_nothing() {
    let request = budget_conversation();
    let full = tokens_of(&request, &budget_chunks());
    let out = fitted(full + 100, &request, &budget_chunks());
    assert_eq!(sources(&out), ["a.md", "b.md", "c.md", "d.md"]);
    assert_eq!(out.prompt_tokens.unwrap() as usize, full);
    let text = InferenceRequest::text(SessionId::new("s"), long_text("prompt"));
    let full = tokens_of(&text, &budget_chunks());
    assert_eq!(
        fitted(full + 100, &text, &budget_chunks()).prompt_tokens.unwrap() as usize,
        full
    );
}

#[test]
fn the_lowest_scored_chunks_go_first() {
    let request = budget_conversation();
    let chunks = budget_chunks();
    let full = tokens_of(&request, &chunks);
    let out = fitted(full - 50 + 100, &request, &chunks);
    assert_eq!(sources(&out), ["a.md", "c.md", "d.md"]);
    assert_eq!(out.messages.as_deref().unwrap().len(), 6, "no turn was dropped");
    assert!(out.prompt.contains("First question"));

    // Room for the two best (a.md 0.9, c.md 0.5) and a little: b.md (0.1), then d.md (0.3) go.
    let best_two = tokens_of(&request, &[chunks[0].clone(), chunks[2].clone()]);
    let out = fitted(best_two + 10 + 100, &request, &chunks);
    assert_eq!(sources(&out), ["a.md", "c.md"]);
    assert_eq!(out.prompt_tokens.unwrap() as usize, best_two);
}

#[test]
fn then_the_oldest_turns_go_in_the_prompt_and_the_messages_alike() {
    let request = budget_conversation();
    let without_chunks = tokens_of(&request, &[]);
    let out = fitted(without_chunks - 5 + 100, &request, &budget_chunks());
    assert_eq!(sources(&out), Vec::<&str>::new());
    assert_eq!(
        out.prompt.as_ref(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n\
         <|im_start|>user\nSecond question?<|im_end|>\n\
         <|im_start|>assistant\nSecond answer.<|im_end|>\n\
         <|im_start|>user\nLast question?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        out.messages.as_deref().unwrap(),
        [
            ChatMessage::system("You are terse."),
            ChatMessage::user("Second question?"),
            assistant("Second answer."),
            ChatMessage::user("Last question?"),
        ]
    );
}

#[test]
fn what_cannot_fit_is_a_context_length_error_counted_on_the_text() {
    let minimal = tokens_of(&chat(vec![ChatMessage::user("Last question?")]), &[]);
    let request = budget_conversation();
    let out = fitted(minimal + 100, &request, &budget_chunks());
    assert_eq!(out.prompt_tokens.unwrap() as usize, minimal);
    assert_eq!(
        out.messages.as_deref().unwrap()[1..],
        [ChatMessage::user("Last question?")]
    );
    match with_window(minimal + 99).assemble(&request, &budget_chunks()) {
        Err(PipelineError::ContextLength { needed, limit }) => {
            assert_eq!((needed, limit), (minimal + 100, minimal + 99));
        }
        other => panic!("expected ContextLength, got {other:?}"),
    }
}

#[test]
fn short_turns_go_no_more_than_needed() {
    // Short turns, where the framing outweighs the text: the estimates must count it.
    let mut messages = Vec::new();
    for turn in 0..8 {
        messages.push(ChatMessage::user(format!("Question {turn}?")));
        messages.push(assistant("Yes."));
    }
    messages.push(ChatMessage::user("Last?"));
    let after = |dropped: usize| chat(messages[2 * dropped..].to_vec());
    for must_go in [1, 3, 6] {
        let window = tokens_of(&after(must_go), &[]) + 100;
        assert!(tokens_of(&after(must_go - 1), &[]) + 100 > window);
        let out = fitted(window, &after(0), &budget_chunks()[..2]);
        let kept = &out.messages.as_deref().unwrap()[1..];
        assert_eq!(kept, &messages[2 * must_go..], "{must_go} turns must go");
    }
}

// ---------------------------------------------------------------------------------------------
// TOML

#[test]
fn a_toml_assemble_section_with_all_three_templates_parses_and_builds() {
    #[derive(serde::Deserialize)]
    struct File {
        assemble: AssembleConfig,
    }
    let text = r#"
[assemble]
system = "You answer questions about {{ meta.product | default('our product') }}."
context = """
Documents:
{% for c in chunks %}
- [{{ c.source }}#{{ c.position }}] {{ c.text }}
{% endfor %}
"""
prompt = "{% if system %}<|im_start|>system\n{{ system }}{% if context +%}\n\n{{ context }}{% endif %}<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
context_window = 128000
reserve_output_tokens = 1024

[assemble.models."llama-3-8b"]
prompt = { file = "prompts/llama3.j2" }
context_window = 8192
"#;
    let file: File = toml::from_str(text).unwrap();
    assert_eq!(
        file.assemble.default.prompt,
        Some(orchestrator_context::assemble::TemplateSource::Inline(
            CHATML.into()
        ))
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("prompts")).unwrap();
    std::fs::write(dir.path().join("prompts/llama3.j2"), LLAMA3).unwrap();
    let assembler = TemplateAssembler::new(file.assemble.with_base_dir(dir.path())).unwrap();
    let out = assembler.assemble(&two_turns(), &docs()[..1]).unwrap();
    assert!(
        out.prompt
            .starts_with("<|im_start|>system\nYou answer questions about Orchestrator.")
    );
    assert!(
        out.prompt.contains("\n\nDocuments:\n- [guide.md#2] Queues"),
        "{}",
        out.prompt
    );
    let llama = assembler
        .assemble(&two_turns().with_model("llama-3-8b"), &[])
        .unwrap();
    assert!(llama.prompt.starts_with("<|begin_of_text|>"), "{}", llama.prompt);
}
