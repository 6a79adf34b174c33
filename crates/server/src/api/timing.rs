//! The gateway's own time: the overhead figure (`X-Orchestrator-Overhead-Ms`, the stream's closing
//! comment, the access line) and how milliseconds are written.

use std::fmt;
use std::time::Duration;

use axum::http::HeaderValue;
use tokio_prompt_orchestrator::{Completion, Stage};

/// Gateway time that was not the model's: everything since the request arrived, minus the time
/// the Inference stage spent in the model call.
pub fn overhead(elapsed: Duration, completion: &Completion) -> Duration {
    elapsed.saturating_sub(completion.timings.stage(Stage::Inference).active)
}

pub fn overhead_value(overhead: Duration) -> HeaderValue {
    // A formatted number is always a valid header value.
    HeaderValue::try_from(Millis(overhead).text()).unwrap_or(HeaderValue::from_static("0"))
}

/// A duration as milliseconds with three decimals (`1.234`), rounded to the microsecond.
///
/// Written from integers, twice per request (the overhead header and the access line):
/// formatting an `f64` with a precision, or `write!` of the integers, costs more.
pub struct Millis(pub Duration);

impl Millis {
    /// The duration as text: `1.234`.
    pub fn text(&self) -> String {
        let micros = (self.0.as_nanos() + 500) / 1_000;
        let mut text = String::from(itoa::Buffer::new().format(micros / 1_000));
        text.push('.');
        // 1000 to 1999: the fraction's three digits, zeros included, after the leading 1.
        text.push_str(&itoa::Buffer::new().format(1_000 + micros % 1_000)[1..]);
        text
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_have_three_decimals_rounded_to_the_microsecond() {
        let ms = |nanos| Millis(Duration::from_nanos(nanos)).to_string();
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(499), "0.000");
        assert_eq!(ms(500), "0.001");
        assert_eq!(ms(1_234_567), "1.235");
        assert_eq!(ms(12_000_000_000), "12000.000");
        assert_eq!(ms(1_050_000), "1.050");
    }
}
