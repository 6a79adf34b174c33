//! Where a validation problem is in the file: its TOML path (`models[1].backends[0]`) looked up
//! in a spanned parse of the text, as a line and column.

use toml::de::{DeTable, DeValue};

/// One step of a path: a table key or an array index.
#[derive(Debug, PartialEq, Eq)]
enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

/// `a.b[2].c` -> `a`, `b`, 2, `c`; a key that is not a bare name is quoted, as [`key`] writes it:
/// `rag.models."gpt-4.1".top_k` -> `rag`, `models`, `gpt-4.1`, `top_k`.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            rest = after;
        } else if let Some(after) = rest.strip_prefix('[') {
            let (index, after) = after.split_once(']').unwrap_or((after, ""));
            if let Ok(i) = index.parse() {
                steps.push(Step::Index(i));
            }
            rest = after;
        } else if let Some(after) = rest.strip_prefix('"') {
            let end = after.find('"').unwrap_or(after.len());
            steps.push(Step::Key(&after[..end]));
            rest = after.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            steps.push(Step::Key(&rest[..end]));
            rest = &rest[end..];
        }
    }
    steps
}

/// `name` as a key in a TOML path: bare when it is a bare TOML key, quoted otherwise (a model
/// called `gpt-4.1` is `models."gpt-4.1"`, not three keys).
pub fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
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
        let dotted = format!("rag.models.{}.top_k", key("gpt-4.1"));
        assert_eq!(dotted, "rag.models.\"gpt-4.1\".top_k");
        assert_eq!(
            steps(&dotted),
            [
                Step::Key("rag"),
                Step::Key("models"),
                Step::Key("gpt-4.1"),
                Step::Key("top_k")
            ]
        );
    }

    #[test]
    fn a_dotted_model_name_is_found_on_its_own_line() {
        let text = "[rag.models.\"gpt-4.1\"]\ntop_k = 0\n";
        let path = format!("rag.models.{}.top_k", key("gpt-4.1"));
        assert_eq!(locate(text, &path), Some((2, 9)));
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
