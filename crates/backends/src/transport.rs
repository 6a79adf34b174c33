//! Transport failures in an operator's words: what happened to the connection, not the HTTP
//! client's layers (`client error (SendRequest): connection error: ...`). A TLS failure arrives
//! as an `io::Error` carrying rustls's own message, which says what was wrong.

use std::error::Error;
use std::io;

/// What went wrong with a call's connection, from the error and its causes: the innermost cause
/// that says something (refused, reset, closed early, a name that does not resolve), with
/// "could not connect" in front when the call never reached the server.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut connecting = false;
    let mut what: Option<String> = None;
    let mut cause: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            connecting |= client.is_connect();
        } else if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() {
                what = Some("the connection closed before the answer was complete".into());
            } else if hyper.is_parse() {
                what = Some(format!("the answer is not valid HTTP ({hyper})"));
            }
        } else if let Some(io) = e.downcast_ref::<io::Error>() {
            what = Some(io_words(io));
        }
        cause = e.source();
        if cause.is_none() && what.is_none() {
            what = Some(innermost(e));
        }
    }
    let what = what.unwrap_or_default();
    if connecting {
        format!("could not connect ({what})")
    } else {
        what
    }
}

fn io_words(error: &io::Error) -> String {
    use io::ErrorKind as K;
    match error.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "the connection was reset".into(),
        K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => "the connection closed".into(),
        K::TimedOut => "timed out".into(),
        // Name resolution failures are plain `io::Error`s carrying the resolver's message.
        _ if error.to_string().contains("lookup address") => {
            format!("the host name does not resolve: {}", innermost(error))
        }
        _ => innermost(error),
    }
}

/// An error's own words without the OS's code suffix.
fn innermost(error: &dyn Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(&'static str, io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn the_innermost_io_cause_is_named_without_the_layers_around_it() {
        let reset = Wrapper(
            "client error (SendRequest)",
            io::ErrorKind::ConnectionReset.into(),
        );
        assert_eq!(describe(&reset), "the connection was reset");
        let odd = Wrapper(
            "connection error",
            io::Error::other("permission denied (os error 13)"),
        );
        assert_eq!(describe(&odd), "permission denied");
    }

    #[test]
    fn an_error_without_causes_is_its_own_words() {
        let plain = io::Error::other("something else");
        assert_eq!(describe(&plain), "something else");
    }
}
