//! The token budget: what to drop when a prompt does not fit the model's context window.
//!
//! The prompt must leave room for the answer: the request's own `max_tokens` when it sets one (the
//! upstream refuses a prompt that leaves less), else `reserve_output_tokens`. When it does
//! not, the retrieved chunks go first, lowest score first, one at a time; then the oldest turns of
//! the conversation. The system prompt, the tools and the last user turn are never dropped: if
//! they alone do not fit, the request fails with [`PipelineError::ContextLength`].
//!
//! Every part is counted once, and dropping subtracts its count: the whole prompt is never encoded
//! again per step. Only the context block, whose template may frame chunks in any way, is rendered
//! and counted again once its estimate fits, to confirm it.

use tokio_prompt_orchestrator::PipelineError;

/// A model's window and the part of it kept for the answer (the configured reserve is below the
/// window, checked when the assembler is built; a request's `max_tokens` may not be).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub window: usize,
    pub reserve: usize,
}

impl Budget {
    /// Tokens the prompt may use.
    pub(crate) fn limit(self) -> usize {
        self.window.saturating_sub(self.reserve)
    }

    /// This budget for a request that asks for at most `max_tokens` of answer, when it says.
    pub(crate) fn for_answer(self, max_tokens: Option<u32>) -> Self {
        match max_tokens {
            Some(tokens) => Self {
                reserve: tokens as usize,
                ..self
            },
            None => self,
        }
    }
}

/// What the prompt's parts cost, in tokens.
pub(crate) struct Costs<'a> {
    /// The parts that are never dropped: system prompt, tools, last turn, and the chat framing
    /// around them.
    pub fixed: usize,
    /// The droppable turns, oldest first.
    pub turns: &'a [usize],
    /// The context block with every chunk, as rendered; 0 without chunks.
    pub context: usize,
    /// What a non-empty context block adds around itself: a separator, or the framing of a
    /// system message that only exists because of it.
    pub context_framing: usize,
}

/// What fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fit {
    /// How many chunks were dropped, counted along the drop order.
    pub dropped_chunks: usize,
    /// How many of the oldest turns were dropped.
    pub dropped_turns: usize,
    /// The prompt's tokens after dropping.
    pub total: usize,
}

/// Decides what to drop so the prompt fits `budget`.
///
/// `chunk_costs` gives each chunk's share of the context block, in drop order; it is called only
/// when something must go. `recount(k)` renders the block without the first `k` chunks of the drop
/// order and returns its exact tokens (`0 < k <` the number of chunks).
///
/// # Errors
/// [`PipelineError::ContextLength`] when the parts that are never dropped do not fit; `needed`
/// counts them plus the reserve, `limit` is the window (OpenAI's convention: the request needs
/// prompt + answer tokens). Errors from `recount` (a template failing) are passed on.
pub(crate) fn fit(
    budget: Budget,
    costs: &Costs<'_>,
    chunk_costs: impl FnOnce() -> Vec<usize>,
    mut recount: impl FnMut(usize) -> Result<usize, PipelineError>,
) -> Result<Fit, PipelineError> {
    let limit = budget.limit();
    let block = |tokens: usize| {
        if tokens == 0 {
            0
        } else {
            tokens + costs.context_framing
        }
    };
    let turns: usize = costs.turns.iter().sum();
    let mut total = costs.fixed + turns + block(costs.context);
    let mut fit = Fit {
        dropped_chunks: 0,
        dropped_turns: 0,
        total,
    };
    if total <= limit {
        return Ok(fit);
    }

    if costs.context > 0 {
        let shares = chunk_costs();
        let without_context = costs.fixed + turns;
        // Drop on the estimate first (no rendering), then confirm with one exact count; an
        // estimate that was a little low costs one more render per extra chunk.
        let mut estimate = costs.context;
        let mut dropped = 0;
        while dropped < shares.len() && without_context + block(estimate) > limit {
            estimate = estimate.saturating_sub(shares[dropped]);
            dropped += 1;
        }
        let mut context = 0;
        while dropped < shares.len() {
            let exact = recount(dropped)?;
            if without_context + block(exact) <= limit {
                context = exact;
                break;
            }
            dropped += 1;
        }
        fit.dropped_chunks = dropped;
        total = without_context + block(context);
    }

    for &turn in costs.turns {
        if total <= limit {
            break;
        }
        total -= turn;
        fit.dropped_turns += 1;
    }
    if total > limit {
        return Err(PipelineError::ContextLength {
            needed: total + budget.reserve,
            limit: budget.window,
        });
    }
    fit.total = total;
    Ok(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Budget = Budget {
        window: 1000,
        reserve: 100,
    };

    /// A context block of 100-token chunks plus 10 of header; recounts are exact.
    fn run(fixed: usize, turns: &[usize], chunks: usize) -> (Result<Fit, PipelineError>, Vec<usize>) {
        let context = if chunks == 0 { 0 } else { 10 + 100 * chunks };
        let costs = Costs {
            fixed,
            turns,
            context,
            context_framing: 1,
        };
        let mut recounts = Vec::new();
        let fit = fit(
            BUDGET,
            &costs,
            || vec![100; chunks],
            |k| {
                recounts.push(k);
                Ok(10 + 100 * (chunks - k))
            },
        );
        (fit, recounts)
    }

    #[test]
    fn a_prompt_that_fits_is_left_alone() {
        let (fit, recounts) = run(100, &[50, 50], 5);
        assert_eq!(
            fit.unwrap(),
            Fit {
                dropped_chunks: 0,
                dropped_turns: 0,
                total: 100 + 100 + 511
            }
        );
        assert!(recounts.is_empty());
    }

    #[test]
    fn chunks_go_before_turns_with_one_recount() {
        // 300 fixed + 200 turns + 511 context = 1011 > 900: two chunks must go.
        let (fit, recounts) = run(300, &[100, 100], 5);
        assert_eq!(
            fit.unwrap(),
            Fit {
                dropped_chunks: 2,
                dropped_turns: 0,
                total: 300 + 200 + 311
            }
        );
        assert_eq!(recounts, [2]);
    }

    #[test]
    fn turns_go_oldest_first_once_chunks_are_gone() {
        let (fit, recounts) = run(700, &[200, 150, 100], 3);
        assert_eq!(
            fit.unwrap(),
            Fit {
                dropped_chunks: 3,
                dropped_turns: 2,
                total: 800
            }
        );
        assert!(recounts.is_empty(), "no render is needed to drop every chunk");
    }

    #[test]
    fn too_much_fixed_text_is_a_context_length_error() {
        let (fit, _) = run(950, &[10], 1);
        match fit.unwrap_err() {
            PipelineError::ContextLength { needed, limit } => assert_eq!((needed, limit), (1050, 1000)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_low_estimate_is_corrected_by_the_exact_count() {
        let costs = Costs {
            fixed: 500,
            turns: &[],
            context: 410,
            context_framing: 0,
        };
        // The shares say one chunk is enough, the render says otherwise.
        let fit = fit(BUDGET, &costs, || vec![100; 4], |k| Ok(420 - 10 * k)).unwrap();
        assert_eq!(fit.dropped_chunks, 2);
        assert_eq!(fit.total, 900);
    }
}
