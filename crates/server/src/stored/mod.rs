//! Stored responses: the answers of `POST /v1/responses` kept for `previous_response_id` and
//! `GET /v1/responses/{id}`, bounded in number and dropped after `[responses] ttl_s`.
//!
//! Each answer keeps only its own turn (its input without the instructions, and the assistant's
//! output) and the id of the answer it continued, so a long conversation is stored once, not once
//! per turn; [`StoredResponses::conversation`] walks the chain back. A node alone keeps them in a
//! redb file ([`file`]); in cluster mode they go to a JetStream bucket ([`shared`]) that every
//! node reads.

pub mod file;
pub mod shared;

use serde::{Deserialize, Serialize};
use tokio_prompt_orchestrator::{ChatMessage, InferenceRequest, PromptInput, SessionId};

use crate::cluster::Cluster;
use crate::config::ResponsesConfig;
use crate::gateway::error::ApiError;
use crate::gateway::{Delivery, Hints};

/// Puts that failed (counter): the answer was delivered, but cannot be continued or read back.
pub const STORE_FAILURES: &str = "orchestrator_responses_store_failures_total";

/// Turns read back at most for one conversation, and their bytes: bounds on the reads and the
/// memory one request may cause.
const MAX_TURNS: usize = 1000;
const MAX_BYTES: usize = 32 << 20;

/// One stored answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The response object as the client received it, for `GET /v1/responses/{id}`.
    pub object: Box<serde_json::value::RawValue>,
    /// What this answer adds to its conversation: the request's input items and the answer.
    pub turn: Vec<ChatMessage>,
    /// The answer this one continued.
    pub previous: Option<String>,
    /// The API key's name that asked for it: no other key reads, continues or deletes it.
    pub owner: Option<String>,
    /// The session it ran in, which the conversation keeps (and with it its replica's cache).
    pub session: String,
    /// When it was stored, in unix milliseconds.
    pub stored_ms: u64,
}

impl StoredResponse {
    /// Whether the key named `owner` may see it.
    pub fn visible_to(&self, owner: Option<&str>) -> bool {
        self.owner.as_deref() == owner
    }
}

/// A Responses request's turn of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    /// The request's input items, in the pipeline's terms: the last messages of its input.
    pub input: Vec<ChatMessage>,
    /// The stored answer it continues (`previous_response_id`).
    pub previous: Option<String>,
    /// Whether its answer is to be stored (`store`, true unless the client says otherwise).
    pub store: bool,
    /// Request fields the response object repeats.
    pub echo: Echo,
    /// The session it runs in, once admitted.
    pub session: String,
}

/// The request fields a Responses answer repeats, as the response object writes them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Echo {
    pub instructions: Option<String>,
    pub max_output_tokens: Option<u32>,
    pub temperature: f64,
    pub top_p: f64,
    pub parallel_tool_calls: bool,
    pub metadata: serde_json::Value,
    pub user: Option<String>,
    pub tools: serde_json::Value,
    pub tool_choice: serde_json::Value,
}

/// What a conversation needs of each earlier turn: the stored answer without its object.
#[derive(Deserialize)]
struct Link {
    turn: Vec<ChatMessage>,
    previous: Option<String>,
    owner: Option<String>,
    session: String,
}

/// Why a conversation could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("No stored response has the id {0:?} (it may have expired or been deleted).")]
    Missing(String),
    #[error(
        "The conversation's earlier response {0:?} is no longer stored (each response is kept \
         for [responses] ttl_s after it was made, and the oldest go first beyond max_entries); \
         start a new conversation."
    )]
    EarlierMissing(String),
    #[error("The conversation is longer than {MAX_TURNS} turns or {} MiB; start a new one.", MAX_BYTES >> 20)]
    TooLong,
    #[error("The stored responses cannot be read: {0}.")]
    Failed(String),
}

/// Where this node keeps stored responses.
#[derive(Clone)]
pub enum StoredResponses {
    File(file::FileStore),
    Shared(shared::SharedStore),
}

impl StoredResponses {
    /// Opens the store `config` names: the cluster's bucket when clustered, else the file.
    ///
    /// # Errors
    /// When the file or the bucket cannot be opened, naming it.
    pub async fn open(config: &ResponsesConfig, cluster: Option<&Cluster>) -> Result<Self, String> {
        match (cluster, &config.path) {
            (Some(cluster), _) => Ok(Self::Shared(shared::SharedStore::open(cluster, config).await?)),
            (None, Some(path)) => Ok(Self::File(file::FileStore::open(path, config)?)),
            (None, None) => Err("responses.path: is required for a node alone".into()),
        }
    }

    /// # Errors
    /// When the store cannot be written.
    pub async fn put(&self, id: &str, stored: &StoredResponse) -> Result<(), String> {
        let bytes = encode(stored);
        match self {
            Self::File(file) => file.put(id, stored.stored_ms, bytes).await,
            Self::Shared(shared) => shared.put(id, bytes).await,
        }
    }

    /// The answer stored as `id`, unless it is gone.
    ///
    /// # Errors
    /// When the store cannot be read, or what it holds is malformed.
    pub async fn get(&self, id: &str) -> Result<Option<StoredResponse>, String> {
        let Some(bytes) = self.read(id).await? else {
            return Ok(None);
        };
        decode(id, &bytes).map(Some)
    }

    /// The bytes stored as `id`, unless they are gone (expired, evicted, deleted).
    async fn read(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Self::File(file) => file.read(id).await,
            Self::Shared(shared) => shared.read(id).await,
        }
    }

    /// Removes `id`, if it is there.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn delete(&self, id: &str) -> Result<(), String> {
        match self {
            Self::File(file) => file.delete(id).await,
            Self::Shared(shared) => shared.delete(id).await,
        }
    }

    /// Every turn of the conversation that `id` ends, oldest first, as `owner` may see it; and
    /// the session its last turn ran in.
    ///
    /// # Errors
    /// A missing answer anywhere in the chain, a chain too long, a store that cannot be read.
    pub async fn conversation(&self, id: &str, owner: Option<&str>) -> Result<Earlier, ReadError> {
        let mut turns = Vec::new();
        let mut session = None;
        let mut read = 0;
        let mut next = Some(id.to_owned());
        while let Some(at) = next {
            let missing = || {
                if at == id {
                    ReadError::Missing(at.clone())
                } else {
                    ReadError::EarlierMissing(at.clone())
                }
            };
            let bytes = self
                .read(&at)
                .await
                .map_err(ReadError::Failed)?
                .ok_or_else(missing)?;
            read += bytes.len();
            if turns.len() == MAX_TURNS || read > MAX_BYTES {
                return Err(ReadError::TooLong);
            }
            let link: Link = serde_json::from_slice(&bytes)
                .map_err(|e| ReadError::Failed(format!("the stored response {at:?} is malformed: {e}")))?;
            if link.owner.as_deref() != owner {
                return Err(missing());
            }
            session.get_or_insert(link.session);
            next = link.previous;
            turns.push(link.turn);
        }
        Ok(Earlier {
            messages: turns.into_iter().rev().flatten().collect(),
            session: session.unwrap_or_default(),
        })
    }
}

/// The conversation a request continues.
pub struct Earlier {
    pub messages: Vec<ChatMessage>,
    pub session: String,
}

/// Puts the earlier turns of the conversation a request continues before its own input, after
/// its instructions, and runs it in the session of the turn it continues unless it names one
/// (`X-Session-Id` or `user`); records the session in the turn. Without a stored answer to
/// continue, only records the session.
///
/// # Errors
/// 400 `previous_response_not_found` when the answer it continues is not stored for this key
/// (or nothing is stored here), 400 for a conversation too long, 503 when the store cannot be
/// read.
pub async fn continue_turn(
    store: Option<&StoredResponses>,
    owner: Option<&str>,
    hints: &Hints,
    delivery: &mut Delivery,
    request: &mut InferenceRequest,
) -> Result<(), ApiError> {
    let named_session = hints.session.is_some() || delivery.user.is_some();
    let Some(turn) = delivery.turn.as_deref_mut() else {
        return Ok(());
    };
    if let Some(previous) = turn.previous.as_deref() {
        let Some(store) = store else {
            return Err(not_found(
                "No stored responses are kept here to continue: configure [responses] to store them.",
            ));
        };
        let earlier = store.conversation(previous, owner).await.map_err(|e| match e {
            ReadError::Missing(_) | ReadError::EarlierMissing(_) => not_found(e.to_string()),
            ReadError::TooLong => ApiError::invalid(
                "previous_response_id",
                format!(
                    "continues a conversation longer than {MAX_TURNS} turns or {} MiB; start a new one",
                    MAX_BYTES >> 20
                ),
            ),
            ReadError::Failed(_) => ApiError::store_unavailable(e.to_string()),
        })?;
        if let PromptInput::Chat(messages) = &mut request.input {
            let at = messages.len().saturating_sub(turn.input.len());
            messages.splice(at..at, earlier.messages);
        }
        if !named_session && !earlier.session.is_empty() {
            request.session = SessionId::new(&earlier.session);
        }
    }
    turn.session = request.session.as_str().to_owned();
    Ok(())
}

/// 400 `previous_response_not_found`, as OpenAI answers.
fn not_found(message: impl Into<String>) -> ApiError {
    let mut error = ApiError::invalid("", message);
    error.param = Some("previous_response_id".into());
    error.code = "previous_response_not_found";
    error
}

/// `stored` as the bytes kept.
fn encode(stored: &StoredResponse) -> Vec<u8> {
    // A struct of JSON values and strings always serializes.
    serde_json::to_vec(stored).unwrap_or_default()
}

fn decode(id: &str, bytes: &[u8]) -> Result<StoredResponse, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the stored response {id:?} is malformed: {e}"))
}
