//! Post-processors: transforms of a request's output stream that a pipeline is built with
//! (redaction, length caps, format checks), applied in order after the request's own stop
//! sequences. Each works on the stream as it flows, holding back only what it must.

use std::sync::Arc;

use super::stop::StopMatcher;
use crate::event::FinishReason;
use crate::request::{InferenceRequest, PromptInput};

/// One kind of output transform, shared by every request.
pub trait PostProcessor: Send + Sync + 'static {
    /// Names the processor in errors.
    fn name(&self) -> &str;

    /// Its work on one request's output; `None` when it does not apply to this request (another
    /// model, no JSON mode asked for, ...).
    fn start(&self, request: &InferenceRequest) -> Option<Box<dyn PostStep>>;
}

/// A post-processor at work on one request's output.
pub trait PostStep: Send {
    /// The next piece of text: returns what may go on now, and whether the output ends here.
    fn push(&mut self, text: &str) -> Step;

    /// The output is complete: what was held back, or why the output is not acceptable.
    ///
    /// # Errors
    /// A message for the caller, e.g. that the output is not valid JSON.
    fn finish(&mut self) -> Result<String, String>;
}

/// What one piece of text produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub emit: String,
    /// The output ends after `emit`, for this reason.
    pub end: Option<FinishReason>,
}

/// Stop sequences set for every request of a pipeline (or of some models), on top of the ones a
/// request brings.
pub struct StopSequences {
    name: String,
    sequences: Vec<String>,
}

impl StopSequences {
    pub fn new(sequences: Vec<String>) -> Self {
        Self {
            name: "stop".into(),
            sequences,
        }
    }
}

impl PostProcessor for StopSequences {
    fn name(&self) -> &str {
        &self.name
    }

    fn start(&self, _request: &InferenceRequest) -> Option<Box<dyn PostStep>> {
        Some(Box::new(StopMatcher::new(&self.sequences)))
    }
}

impl PostStep for StopMatcher {
    fn push(&mut self, text: &str) -> Step {
        let scan = StopMatcher::push(self, text);
        Step {
            emit: scan.emit,
            end: scan.stopped.then_some(FinishReason::Stop),
        }
    }

    fn finish(&mut self) -> Result<String, String> {
        Ok(StopMatcher::finish(self))
    }
}

/// A step of a request's chain, with the processor it came from (`None`: the request's own
/// stop sequences), which names it in a rejection.
type Entry = (Option<Arc<dyn PostProcessor>>, Box<dyn PostStep>);

/// The request's stop sequences and the processors that apply to it, in order. Empty (and
/// allocation-free) for a request with neither, and for inputs to embed: processors act on
/// generated text, which an embedding has none of.
pub(crate) struct Chain {
    steps: Vec<Entry>,
}

/// Why a chain rejected the output: the processor's name and its message.
pub(crate) type Rejection = (String, String);

impl Chain {
    pub fn new(processors: &[Arc<dyn PostProcessor>], request: &InferenceRequest) -> Self {
        let mut steps: Vec<Entry> = Vec::new();
        if matches!(request.input, PromptInput::Embed(_)) {
            return Self { steps };
        }
        if request.params.stop.iter().any(|s| !s.is_empty()) {
            steps.push((None, Box::new(StopMatcher::new(&request.params.stop))));
        }
        for processor in processors {
            if let Some(step) = processor.start(request) {
                steps.push((Some(processor.clone()), step));
            }
        }
        Self { steps }
    }

    /// Passes `text` through every step; when one ends the output, the steps after it flush.
    pub fn push(&mut self, text: String) -> Result<Step, Rejection> {
        through(&mut self.steps, text)
    }

    /// The output is complete: flushes every step in order. A step may still end the output
    /// (a cap reached by held-back text).
    pub fn finish(&mut self) -> Result<Step, Rejection> {
        finish(&mut self.steps)
    }
}

fn through(steps: &mut [Entry], mut text: String) -> Result<Step, Rejection> {
    for i in 0..steps.len() {
        let step = steps[i].1.push(&text);
        text = step.emit;
        if let Some(end) = step.end {
            // Nothing later in the output counts; what got this far goes through the rest, which
            // then release what they hold.
            let rest = &mut steps[i + 1..];
            let mut emit = through(rest, text)?.emit;
            emit.push_str(&finish(rest)?.emit);
            return Ok(Step { emit, end: Some(end) });
        }
    }
    Ok(Step {
        emit: text,
        end: None,
    })
}

fn finish(steps: &mut [Entry]) -> Result<Step, Rejection> {
    let mut out = String::new();
    for i in 0..steps.len() {
        let (head, tail) = steps.split_at_mut(i + 1);
        let (processor, step) = &mut head[i];
        let held = step.finish().map_err(|message| {
            let name = processor.as_ref().map_or("stop", |p| p.name());
            (name.to_string(), message)
        })?;
        // Later steps see it as more text; they are flushed in the next rounds.
        let step = through(tail, held)?;
        out.push_str(&step.emit);
        if step.end.is_some() {
            return Ok(Step {
                emit: out,
                end: step.end,
            });
        }
    }
    Ok(Step { emit: out, end: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::SessionId;

    /// Upper-cases, holding nothing.
    struct Upper;
    impl PostStep for Upper {
        fn push(&mut self, text: &str) -> Step {
            Step {
                emit: text.to_uppercase(),
                end: None,
            }
        }
        fn finish(&mut self) -> Result<String, String> {
            Ok(String::new())
        }
    }
    struct UpperProcessor;
    impl PostProcessor for UpperProcessor {
        fn name(&self) -> &str {
            "upper"
        }
        fn start(&self, _: &InferenceRequest) -> Option<Box<dyn PostStep>> {
            Some(Box::new(Upper))
        }
    }

    fn request() -> InferenceRequest {
        InferenceRequest::text(SessionId::new("s"), "q")
    }

    #[test]
    fn a_request_without_stops_or_processors_has_an_empty_chain() {
        let mut chain = Chain::new(&[], &request());
        assert!(chain.steps.is_empty());
        assert_eq!(chain.push("as is".into()).unwrap().emit, "as is");
        assert_eq!(chain.finish().unwrap(), Step::default());
    }

    #[test]
    fn steps_apply_in_order_and_an_end_flushes_the_rest() {
        let processors: Vec<Arc<dyn PostProcessor>> = vec![
            Arc::new(StopSequences::new(vec!["END".into()])),
            Arc::new(UpperProcessor),
        ];
        let mut chain = Chain::new(&processors, &request());
        assert_eq!(chain.push("abc E".into()).unwrap().emit, "ABC ");
        let step = chain.push("ND more".into()).unwrap();
        assert_eq!(
            step,
            Step {
                emit: String::new(),
                end: Some(FinishReason::Stop)
            }
        );

        let mut chain = Chain::new(&processors, &request());
        assert_eq!(chain.push("held E".into()).unwrap().emit, "HELD ");
        // The stream ends: the held "E" was plain text after all, and goes through `upper`.
        assert_eq!(chain.finish().unwrap().emit, "E");
    }
}
