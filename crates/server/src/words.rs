//! serde's messages in a user's words: `invalid type: string "x", expected u32 at line 1
//! column 30` names a Rust type and a position the field's path already gives; a client or an
//! operator is told `must be a whole number from 0 to 4294967295 (got "x")`.

/// The document a message is about: JSON calls a map an object, TOML a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
}

/// What a field's value is wrong in, and the field it is about: a missing field is named by its
/// own path (`parent.field`) rather than its parent's. Messages serde did not write pass through.
pub fn field_error(path: &str, message: &str, format: Format) -> (String, String) {
    let message = strip_position(message);
    if let Some(field) = between(message, "missing field `", "`") {
        let path = if path.is_empty() || path == "." {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return (path, "is required".to_owned());
    }
    (path.to_owned(), plain(message, format))
}

/// serde's message `message` in plain words.
pub fn plain(message: &str, format: Format) -> String {
    let message = strip_position(message);
    let parsed = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.split_once(", expected "));
    if let Some((got, expected)) = parsed {
        return format!(
            "must be {} (got {})",
            expected_words(expected, format),
            got_words(got, format)
        );
    }
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((got, expected)) = rest.split_once(", expected ")
    {
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        return format!("must be one of {expected} (got {got})");
    }
    message.to_owned()
}

/// What serde expected, for a reader who does not know Rust's types.
fn expected_words(expected: &str, format: Format) -> String {
    let whole = |max: u64| format!("a whole number from 0 to {max}");
    match expected {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" => "a whole number, 0 or more".into(),
        _ if expected.starts_with("a nonzero u") => "a whole number, 1 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "an array".into(),
        "a boolean" => "true or false".into(),
        "a borrowed string" | "a string" => "a string".into(),
        "unit" => "null".into(),
        _ if expected == "a map" || expected.starts_with("struct ") => map_word(format).into(),
        _ if expected.starts_with("enum ") => "one of the values this field takes".into(),
        other => other.into(),
    }
}

/// The value serde was given, as the document spelled it.
fn got_words(got: &str, format: Format) -> String {
    let quoted = |prefix: &str| got.strip_prefix(prefix).map(|v| v.trim_matches('`').to_owned());
    if let Some(value) = quoted("integer ")
        .or_else(|| quoted("floating point "))
        .or_else(|| quoted("boolean "))
    {
        return value;
    }
    if let Some(text) = got.strip_prefix("string ") {
        return text.to_owned();
    }
    match got {
        "sequence" => "an array".into(),
        "map" => map_word(format).into(),
        "unit value" | "null" => "null".into(),
        other => other.into(),
    }
}

fn map_word(format: Format) -> &'static str {
    match format {
        Format::Json => "an object",
        Format::Toml => "a table",
    }
}

/// serde_json's ` at line 1 column 30`: the field's path says where.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => &message[..at],
        _ => message,
    }
}

fn between<'m>(text: &'m str, open: &str, close: &str) -> Option<&'m str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_types_become_words() {
        let json = |m| plain(m, Format::Json);
        assert_eq!(
            json("invalid value: integer `-1`, expected u32 at line 1 column 31"),
            "must be a whole number from 0 to 4294967295 (got -1)"
        );
        assert_eq!(
            json("invalid type: string \"hot\", expected f32 at line 1 column 35"),
            "must be a number (got \"hot\")"
        );
        assert_eq!(
            json("invalid type: integer `5`, expected a sequence at line 1 column 28"),
            "must be an array (got 5)"
        );
        assert_eq!(
            json("invalid type: sequence, expected struct Message"),
            "must be an object (got an array)"
        );
        assert_eq!(
            plain(
                "invalid type: integer `2`, expected struct RetryConfig",
                Format::Toml
            ),
            "must be a table (got 2)"
        );
    }

    #[test]
    fn variants_and_fields_are_listed_as_serde_lists_them() {
        assert_eq!(
            plain(
                "unknown variant `robot`, expected one of `user`, `tool` at line 1 column 43",
                Format::Json
            ),
            "must be one of `user`, `tool` (got `robot`)"
        );
        // serde's own list of the fields is already in plain words.
        let unknown = "unknown field `mode`, expected `kind` or `name`";
        assert_eq!(plain(unknown, Format::Toml), unknown);
    }

    #[test]
    fn a_missing_field_is_named_by_its_own_path() {
        assert_eq!(
            field_error(
                "messages[0]",
                "missing field `role` at line 1 column 20",
                Format::Json
            ),
            ("messages[0].role".to_owned(), "is required".to_owned())
        );
        assert_eq!(
            field_error(".", "missing field `name`", Format::Toml),
            ("name".to_owned(), "is required".to_owned())
        );
    }

    #[test]
    fn other_messages_pass_through() {
        assert_eq!(
            plain("must be between 0 and 2", Format::Json),
            "must be between 0 and 2"
        );
    }
}
