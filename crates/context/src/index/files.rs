//! Finding the files to ingest (walking directories in a stable order) and reading the text out of
//! them: `.txt` and `.md` whole, `.jsonl` one record per line.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::error::{IndexError, LineError};

/// How a file's bytes become text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// `.txt` or `.md`: the whole file is one document.
    Text,
    /// `.jsonl`: each non-blank line is a JSON object whose text field is one document.
    Jsonl,
}

/// A file to ingest.
#[derive(Debug)]
pub(crate) struct SourceFile {
    pub path: PathBuf,
    /// How the index names it: the path as given, without `./` parts.
    pub source: String,
    pub kind: FileKind,
}

/// The files found under the paths given to ingest.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub files: Vec<SourceFile>,
    /// Files with an extension ingest does not read, and links to directories.
    pub skipped: usize,
    /// The directories given (walked whole), as the index names paths under them.
    pub dirs: Vec<PathBuf>,
}

/// Every supported file under `paths`: files as given, directories walked recursively with their
/// entries sorted by name, so two ingests of the same tree see the files in the same order.
/// Hidden entries (`.git`, `.DS_Store`) inside a walked directory are passed over without being
/// counted; a file named twice is ingested once.
///
/// # Errors
/// [`IndexError::NotFound`] for a path that does not exist, [`IndexError::Read`] for a directory
/// that cannot be listed.
pub(crate) fn find(paths: &[PathBuf]) -> Result<Found, IndexError> {
    let mut found = Found::default();
    let mut seen = HashSet::new();
    for path in paths {
        let path = normalize(path);
        let metadata = fs::metadata(&path).map_err(|source| match source.kind() {
            ErrorKind::NotFound => IndexError::NotFound { path: path.clone() },
            _ => IndexError::Read {
                path: path.clone(),
                source,
            },
        })?;
        if metadata.is_dir() {
            walk(&path, &mut found, &mut seen)?;
            found.dirs.push(path);
        } else {
            add_file(path, &mut found, &mut seen);
        }
    }
    Ok(found)
}

fn walk(dir: &Path, found: &mut Found, seen: &mut HashSet<String>) -> Result<(), IndexError> {
    let read_error = |source| IndexError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut entries = fs::read_dir(dir)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| IndexError::Read {
            path: path.clone(),
            source,
        })?;
        if file_type.is_dir() {
            walk(&path, found, seen)?;
        } else if file_type.is_file() {
            add_file(path, found, seen);
        } else if fs::metadata(&path).is_ok_and(|target| target.is_file()) {
            // A link to a file is read like the file. Links to directories are not followed
            // (they can form cycles) and, like dangling links, are counted as skipped.
            add_file(path, found, seen);
        } else {
            tracing::debug!(path = %path.display(), "Skipping a link that is not to a file.");
            found.skipped += 1;
        }
    }
    Ok(())
}

fn add_file(path: PathBuf, found: &mut Found, seen: &mut HashSet<String>) {
    let Some(kind) = kind_of(&path) else {
        tracing::debug!(path = %path.display(), "Skipping a file of an unsupported type.");
        found.skipped += 1;
        return;
    };
    let source = path.to_string_lossy().into_owned();
    if seen.insert(source.clone()) {
        found.files.push(SourceFile { path, source, kind });
    }
}

fn kind_of(path: &Path) -> Option<FileKind> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "txt" | "md" => Some(FileKind::Text),
        "jsonl" => Some(FileKind::Jsonl),
        _ => None,
    }
}

/// `./docs/a.md` and `docs/a.md` name the same source.
fn normalize(path: &Path) -> PathBuf {
    let normal: PathBuf = path
        .components()
        .filter(|part| !matches!(part, Component::CurDir))
        .collect();
    if normal.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        normal
    }
}

/// Calls `each` with every document in a file's bytes, and returns the `.jsonl` lines it had to
/// skip. Text that is not valid UTF-8 is decoded with replacement characters (and a warning)
/// rather than failing the ingest: the readable part is still worth finding.
pub(crate) fn for_each_document(
    file: &SourceFile,
    bytes: &[u8],
    text_field: &str,
    mut each: impl FnMut(&str),
) -> Vec<LineError> {
    match file.kind {
        FileKind::Text => {
            let text = String::from_utf8_lossy(bytes);
            if matches!(text, std::borrow::Cow::Owned(_)) {
                tracing::warn!(path = %file.source, "File is not valid UTF-8; bad bytes were replaced.");
            }
            each(&text);
            Vec::new()
        }
        FileKind::Jsonl => {
            let mut errors = Vec::new();
            for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
                if line.trim_ascii().is_empty() {
                    continue;
                }
                match jsonl_text(line, text_field) {
                    Ok(text) => each(&text),
                    Err(message) => errors.push(LineError {
                        source_path: file.source.clone(),
                        line: number + 1,
                        message,
                    }),
                }
            }
            errors
        }
    }
}

/// The text field of one JSONL line, or why there is none.
fn jsonl_text(line: &[u8], field: &str) -> Result<String, String> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| format!("not valid JSON ({e}); each line must be one JSON object"))?;
    let Value::Object(mut object) = value else {
        return Err(format!(
            "a JSON {}, not an object; each line must be one JSON object",
            type_name(&value)
        ));
    };
    match object.remove(field) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!(
            "field `{field}` is a JSON {}, not a string",
            type_name(&other)
        )),
        None => {
            let mut keys: Vec<&str> = object.keys().map(String::as_str).take(8).collect();
            keys.sort_unstable();
            Err(format!(
                "no field `{field}` (this line has: {}); set `jsonl_text_field` to the field that holds the text",
                if keys.is_empty() {
                    "no fields".to_owned()
                } else {
                    keys.join(", ")
                }
            ))
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize(Path::new("./a/./b.md")), PathBuf::from("a/b.md"));
        assert_eq!(normalize(Path::new("./")), PathBuf::from("."));
    }

    #[test]
    fn extensions_are_matched_without_case() {
        assert_eq!(kind_of(Path::new("A.MD")), Some(FileKind::Text));
        assert_eq!(kind_of(Path::new("x.jsonl")), Some(FileKind::Jsonl));
        assert_eq!(kind_of(Path::new("x.json")), None);
        assert_eq!(kind_of(Path::new("README")), None);
    }

    #[test]
    fn jsonl_lines_explain_what_is_wrong() {
        assert_eq!(jsonl_text(br#"{"text": "hi"}"#, "text").unwrap(), "hi");
        let err = jsonl_text(br#"{"body": "hi", "id": 1}"#, "text").unwrap_err();
        assert!(err.contains("no field `text` (this line has: body, id)"), "{err}");
        assert!(err.contains("jsonl_text_field"), "{err}");
        let err = jsonl_text(br#"{"text": 3}"#, "text").unwrap_err();
        assert!(err.contains("is a JSON number"), "{err}");
        let err = jsonl_text(b"[1]", "text").unwrap_err();
        assert!(err.contains("a JSON array, not an object"), "{err}");
        let err = jsonl_text(b"{nope", "text").unwrap_err();
        assert!(err.starts_with("not valid JSON"), "{err}");
    }
}
