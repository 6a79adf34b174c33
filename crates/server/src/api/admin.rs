//! Admin endpoints: `POST /admin/reload` re-reads the config file and swaps in the new pipeline
//! (see [`crate::reload`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use crate::gateway::Gateway;
use crate::gateway::reload::{self, ReloadError};

/// `POST /admin/reload`: 200 with the new generation, warnings and summary; or, when the file
/// is invalid, 400 with every problem and the running pipeline untouched.
pub async fn reload(State(state): State<Arc<Gateway>>) -> Response {
    match reload::reload(&state).await {
        Ok(done) => Json(json!({
            "reloaded": true,
            "generation": done.generation,
            "warnings": done.warnings,
            "summary": done.summary,
        }))
        .into_response(),
        Err(ReloadError::Invalid(error)) => {
            let problems: Vec<_> = error
                .problems
                .iter()
                .map(|p| {
                    json!({
                        "path": p.path,
                        "message": p.message,
                        "line": p.location.map(|l| l.0),
                        "column": p.location.map(|l| l.1),
                    })
                })
                .collect();
            let api_error = ApiError::invalid_config(error.to_string());
            // The OpenAI error object, plus each problem on its own for tools.
            let mut body = serde_json::to_value(api_error.body()).unwrap_or_default();
            body["problems"] = problems.into();
            (api_error.status, Json(body)).into_response()
        }
        Err(refused) => ApiError::reload_refused(refused.to_string()).into_response(),
    }
}
