//! Embedding calls to OpenAI-compatible servers (`POST /embeddings`; llama-server's
//! `/v1/embeddings` when started with `--embeddings`): one call's inputs as one upstream request,
//! asked for as floats, the vectors read back in input order. The caller's other fields
//! (`dimensions`, `user`) are passed through.

use futures_util::StreamExt;
use futures_util::stream;
use http::Uri;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_prompt_orchestrator::{
    EmbedInput, FinishReason, InferenceCall, Passthrough, PromptInput, RawExtra, TokenStream, Usage,
    WorkerChunk, WorkerError,
};

use crate::http::HttpBackend;

/// The upstream request body.
struct Body<'a> {
    model: &'a str,
    input: &'a [EmbedInput],
    extra: &'a RawExtra,
}

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model", self.model)?;
        map.serialize_entry("input", self.input)?;
        // The gateway writes base64 itself when the client asks for it: the vectors are read
        // (to keep their order, to join batches, to cache them) whatever the client wants.
        map.serialize_entry("encoding_format", "float")?;
        for (name, value) in self.extra.iter() {
            if !matches!(name.as_str(), "model" | "input" | "encoding_format") {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
    usage: Option<AnswerUsage>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct AnswerUsage {
    prompt_tokens: u32,
}

/// Embeds `call`'s inputs with `model` at `url`: a stream of the vectors (in a
/// [`Passthrough::embeddings`]) and the usage.
///
/// # Errors
/// As [`HttpBackend::post`]; an answer that is not OpenAI's embedding list, or that does not
/// hold one vector per input (retryable: nothing reached the caller).
pub(crate) async fn embed(
    http: &HttpBackend,
    url: &Uri,
    model: &str,
    call: &InferenceCall,
    deadline: Option<Instant>,
) -> Result<TokenStream, WorkerError> {
    let PromptInput::Embed(input) = &call.request.input else {
        return Err(http.error("an embedding call without inputs to embed", false));
    };
    let body = http.encode(&Body {
        model,
        input,
        extra: &call.request.extra,
    })?;
    let response = http.post(url, body, deadline, false, call.traceparent()).await?;
    let bytes = http.read_all(response, deadline).await?;
    let answer: Answer = serde_json::from_slice(&bytes)
        .map_err(|e| http.error(&format!("the answer is not an OpenAI embedding list ({e})"), true))?;
    let vectors = in_order(answer.data, input.len()).map_err(|problem| http.error(&problem, true))?;
    let usage = Usage::new(answer.usage.map_or(0, |u| u.prompt_tokens), 0);
    let chunks = [
        WorkerChunk::Passthrough(Box::new(Passthrough::embeddings(vectors))),
        WorkerChunk::Finish {
            reason: FinishReason::Stop,
            usage: Some(usage),
        },
    ];
    Ok(stream::iter(chunks.map(Ok)).boxed())
}

/// The vectors by their `index`, one for each of `inputs` inputs.
fn in_order(items: Vec<Item>, inputs: usize) -> Result<Vec<Vec<f32>>, String> {
    if items.len() != inputs {
        return Err(format!("answered {} vectors for {inputs} inputs", items.len()));
    }
    let mut vectors = vec![None; inputs];
    for item in items {
        match vectors.get_mut(item.index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            _ => {
                return Err(format!(
                    "answered the vector of input {} twice or out of range",
                    item.index
                ));
            }
        }
    }
    // Every slot is filled: as many distinct in-range indexes as inputs.
    Ok(vectors.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_put_in_input_order_and_miscounts_are_errors() {
        let item = |index, x| Item {
            index,
            embedding: vec![x],
        };
        assert_eq!(
            in_order(vec![item(1, 1.0), item(0, 0.0)], 2).unwrap(),
            [vec![0.0], vec![1.0]]
        );
        assert!(in_order(vec![item(0, 0.0)], 2).is_err());
        assert!(in_order(vec![item(0, 0.0), item(0, 1.0)], 2).is_err());
        assert!(in_order(vec![item(0, 0.0), item(5, 1.0)], 2).is_err());
    }
}
