//! Where a validation problem is in the file: its TOML path (`models[1].backends[0]`) looked up
//! in a spanned parse of the text, as a line and column.

use toml::de::{DeTable, DeValue};

/// One step of a path: a table key or an array index.
#[derive(Debug, PartialEq, Eq)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

/// `a.b[2].c` -> `a`, `b`, 2, `c`. Keys here are plain names: the paths are the validator's own.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            steps.push(Step::Key(key));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                steps.push(Step::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    steps
}

/// The 1-based line and column of the deepest part of `path` present in `text` (a key that is
/// missing is reported where its table is). `None` when the text does not parse or nothing of
/// the path is there.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let root = DeTable::parse(text).ok()?.into_inner();
    let root = DeValue::Table(root);
    let mut value = &root;
    let mut span = None;
    for step in steps(path) {
        let next = match step {
            Step::Key(key) => value.get(key),
            Step::Index(i) => value.get(i),
        };
        let Some(next) = next else {
            break;
        };
        span = Some(next.span());
        value = next.get_ref();
    }
    Some(super::parse::line_column(text, span?.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nmax_body_bytes = 0\n\n[[models]]\nname = \"a\"\nbackends = [\"x\"]\n\n[[models]]\nname = \"b\"\nbackends = [\"y\", \"vllm-c\"]\n";

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(
            steps("models[1].backends[0]"),
            [
                Step::Key("models"),
                Step::Index(1),
                Step::Key("backends"),
                Step::Index(0)
            ]
        );
        assert_eq!(steps("server.listen"), [Step::Key("server"), Step::Key("listen")]);
    }

    #[test]
    fn values_are_found_by_path() {
        assert_eq!(locate(TEXT, "server.max_body_bytes"), Some((2, 18)));
        assert_eq!(locate(TEXT, "models[1].backends[1]"), Some((10, 18)));
        // A missing key is reported at the deepest part that exists.
        assert_eq!(locate(TEXT, "models[1].fallback"), locate(TEXT, "models[1]"));
        assert_eq!(locate(TEXT, "nowhere"), None);
        assert_eq!(locate("not toml [", "server"), None);
    }
}
