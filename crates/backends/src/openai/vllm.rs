//! What vLLM adds to the OpenAI protocol (`kind = "vllm"`): its `priority` request field, its
//! `/health` at the server root, and the queue length in its Prometheus `/metrics`, which the
//! router's least-outstanding balancing uses.

use tokio_prompt_orchestrator::Priority;

/// vLLM's `priority` for a request: lower is served earlier (with `--scheduling-policy
/// priority`), 0 is its default, so normal requests send nothing.
pub fn priority(priority: Priority) -> Option<i64> {
    match priority {
        Priority::High => Some(-1),
        Priority::Normal => None,
        Priority::Low => Some(1),
    }
}

/// The server root of an API base URL: `http://host:8000/v1` -> `http://host:8000`.
pub fn server_root(base_url: &str) -> &str {
    let base = base_url.trim_end_matches('/');
    base.strip_suffix("/v1").unwrap_or(base)
}

/// Requests waiting in vLLM's queue: the sum of `vllm:num_requests_waiting` over its label sets
/// (one per served model); `None` when the text has no such sample.
pub fn waiting_requests(metrics: &str) -> Option<usize> {
    let mut total = None;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("vllm:num_requests_waiting") else {
            continue;
        };
        // The name must end here: a label set or the value follows.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value = rest.rsplit('}').next().unwrap_or(rest).split_whitespace().next();
        if let Some(v) = value
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
        {
            // Gauges are floats in the text format; the count is whole. A value past `usize`
            // converts to its largest, and the sum stays there rather than wrapping round to
            // a short queue.
            let sum = total.get_or_insert(0usize);
            *sum = sum.saturating_add(v as usize);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_drops_the_api_version() {
        assert_eq!(server_root("http://h:8000/v1"), "http://h:8000");
        assert_eq!(server_root("http://h:8000/v1/"), "http://h:8000");
        assert_eq!(server_root("http://h:8000"), "http://h:8000");
    }

    #[test]
    fn waiting_requests_are_summed_over_models() {
        let text = "# HELP vllm:num_requests_waiting Number of requests waiting.\n\
                    # TYPE vllm:num_requests_waiting gauge\n\
                    vllm:num_requests_waiting{engine=\"0\",model_name=\"a\"} 3.0\n\
                    vllm:num_requests_waiting{engine=\"0\",model_name=\"b\"} 2\n\
                    vllm:num_requests_waiting_by_reason{reason=\"x\"} 9\n\
                    vllm:num_requests_running{model_name=\"a\"} 7.0\n";
        assert_eq!(waiting_requests(text), Some(5));
        assert_eq!(waiting_requests("vllm:num_requests_waiting 4\n"), Some(4));
        assert_eq!(waiting_requests("other_metric 1\n"), None);
    }

    /// Found by the `upstream_text` fuzz target: a gauge too large for a count, then another,
    /// overflowed the sum (a panic with overflow checks; a wrapped, small count without).
    #[test]
    fn a_count_too_large_to_add_saturates() {
        let text = "vllm:num_requests_waiting{model_name=\"a\"} 1e30\n\
                    vllm:num_requests_waiting{model_name=\"b\"} 2\n";
        assert_eq!(waiting_requests(text), Some(usize::MAX));
    }

    #[test]
    fn priorities_map_to_vllm_order() {
        assert_eq!(priority(Priority::High), Some(-1));
        assert_eq!(priority(Priority::Normal), None);
        assert_eq!(priority(Priority::Low), Some(1));
    }
}
