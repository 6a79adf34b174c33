//! Cutting a document into overlapping chunks of about `chunk_chars` characters, the unit the
//! index stores and the RAG stage hands to Assemble.
//!
//! Text is split into paragraphs (at blank lines); a paragraph longer than a chunk is split into
//! sentences (after `.`, `!` or `?` and at line breaks), and a sentence longer than a chunk into
//! runs of whole words. These pieces are packed greedily into chunks. Each chunk after the first
//! starts with the last words of the previous one (at most `overlap_chars`), so a passage cut at a
//! boundary is still found whole. Markdown is treated as text: a heading is a paragraph.
//!
//! The guarantees, checked by the property tests below:
//! - every word of the input is in a chunk, in order, and no word is ever cut;
//! - a chunk is at most `chunk_chars` characters, unless it is one word longer than that;
//! - an overlap is whole words, at most `overlap_chars`, copied from the end of the previous chunk.
//!   Pieces of a split paragraph leave room for the whole overlap; a whole paragraph that nearly
//!   fills a chunk gets a shorter one (or none), because the size bound is what keeps a prompt's
//!   retrieved context predictable, and a paragraph boundary is a natural place to cut anyway.

/// Cuts `text` into chunks of at most `chunk_chars` characters with up to `overlap_chars` of
/// overlap (see the module docs). Blank text gives no chunks. Never panics: a `chunk_chars` of 0
/// is treated as 1 and an overlap that does not leave room for new text is reduced.
pub fn chunk_text(text: &str, chunk_chars: usize, overlap_chars: usize) -> Vec<String> {
    pieces(text, chunk_chars, overlap_chars)
        .into_iter()
        .map(|piece| piece.text)
        .collect()
}

/// A chunk and how much of its start repeats the previous chunk.
#[derive(Debug)]
pub(crate) struct Piece {
    pub text: String,
    /// Bytes at the start of `text` copied from the previous chunk, with the separator after them.
    /// Only the property tests read it; keeping it here lets them check the real packing.
    #[cfg_attr(not(test), allow(dead_code))]
    pub overlap_len: usize,
}

/// What joins a piece to the one before it in a chunk: the kind of boundary it was cut at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sep {
    Paragraph,
    Line,
    Space,
}

impl Sep {
    fn as_str(self) -> &'static str {
        match self {
            Sep::Paragraph => "\n\n",
            Sep::Line => "\n",
            Sep::Space => " ",
        }
    }

    fn chars(self) -> usize {
        self.as_str().len()
    }
}

/// A slice of the input that is never split further: a paragraph, a sentence or a word run.
struct Unit<'a> {
    text: &'a str,
    chars: usize,
    /// The boundary before it, used when it follows another unit in a chunk.
    sep: Sep,
}

pub(crate) fn pieces(text: &str, chunk_chars: usize, overlap_chars: usize) -> Vec<Piece> {
    let limit = chunk_chars.max(1);
    let overlap = overlap_chars.min(limit - 1);
    // Pieces of a split paragraph are made small enough to leave room for a full overlap before
    // them (and the space that joins it); a whole paragraph only has to fit in a chunk.
    let piece_limit = if overlap == 0 {
        limit
    } else {
        (limit - overlap - 1).max(1)
    };
    let mut units = Vec::new();
    for paragraph in paragraphs(text) {
        split_paragraph(paragraph, limit, piece_limit, &mut units);
    }
    pack(&units, limit, overlap)
}

/// Greedy packing: add units while they fit; when one does not, close the chunk and start the
/// next with the previous chunk's tail.
fn pack(units: &[Unit<'_>], limit: usize, overlap: usize) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut current_chars = 0;
    let mut overlap_len = 0;
    let mut has_new_text = false;
    for unit in units {
        let sep = unit.sep;
        if has_new_text {
            if current_chars + sep.chars() + unit.chars <= limit {
                current.push_str(sep.as_str());
                current.push_str(unit.text);
                current_chars += sep.chars() + unit.chars;
                continue;
            }
            // The overlap gets whatever room the unit leaves, so the chunk stays within the limit.
            let room = limit.saturating_sub(unit.chars + sep.chars()).min(overlap);
            let tail = word_tail(&current, room).to_owned();
            out.push(Piece {
                text: std::mem::take(&mut current),
                overlap_len,
            });
            current_chars = tail.chars().count();
            current = tail;
        }
        if current.is_empty() {
            overlap_len = 0;
            current_chars = unit.chars;
        } else {
            current.push_str(sep.as_str());
            overlap_len = current.len();
            current_chars += sep.chars() + unit.chars;
        }
        current.push_str(unit.text);
        has_new_text = true;
    }
    if has_new_text {
        out.push(Piece {
            text: current,
            overlap_len,
        });
    }
    out
}

/// The longest end of `text` that starts at a word and has at most `max_chars` characters.
fn word_tail(text: &str, max_chars: usize) -> &str {
    let mut start = text.len();
    let mut count = 0;
    let mut chars = text.char_indices().rev().peekable();
    while let Some((at, c)) = chars.next() {
        count += 1;
        if count > max_chars {
            break;
        }
        let after_space = chars.peek().is_none_or(|&(_, before)| before.is_whitespace());
        if !c.is_whitespace() && after_space {
            start = at;
        }
    }
    &text[start..]
}

/// Paragraphs: runs of non-blank lines, trimmed.
fn paragraphs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut end = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        if line.trim().is_empty() {
            if let Some(from) = start.take() {
                out.push(text[from..end].trim());
            }
        } else {
            start.get_or_insert(line_start);
            end = line_start + line.trim_end().len();
        }
    }
    if let Some(from) = start {
        out.push(text[from..end].trim());
    }
    out
}

/// A paragraph as one unit if it fits in a chunk, else its sentences of at most `piece_limit`
/// characters (and word runs of at most that for longer sentences).
fn split_paragraph<'a>(paragraph: &'a str, limit: usize, piece_limit: usize, units: &mut Vec<Unit<'a>>) {
    let chars = paragraph.chars().count();
    if chars <= limit {
        units.push(Unit {
            text: paragraph,
            chars,
            sep: Sep::Paragraph,
        });
        return;
    }
    for (sentence, sep) in sentences(paragraph) {
        let chars = sentence.chars().count();
        if chars <= piece_limit {
            units.push(Unit {
                text: sentence,
                chars,
                sep,
            });
        } else {
            word_runs(sentence, sep, piece_limit, units);
        }
    }
}

/// Characters that may close a sentence after its full stop: `He said "no."` ends at the quote.
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
}

/// Sentences of a paragraph, each with the boundary before it (the first gets `Paragraph`).
/// A sentence ends after `.`, `!` or `?` (and any closing quotes or brackets) followed by
/// whitespace, or at a line break, which keeps Markdown list items and table rows whole.
fn sentences(paragraph: &str) -> Vec<(&str, Sep)> {
    let chars: Vec<(usize, char)> = paragraph.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut sep = Sep::Paragraph;
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let mut end = None;
        if c == '\n' {
            end = Some(at);
        } else if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && is_closer(chars[j].1) {
                j += 1;
            }
            if j < chars.len() && chars[j].1.is_whitespace() {
                end = Some(chars[j].0);
                i = j;
            }
        }
        let Some(end) = end else {
            i += 1;
            continue;
        };
        let mut newline = false;
        while i < chars.len() && chars[i].1.is_whitespace() {
            newline |= chars[i].1 == '\n';
            i += 1;
        }
        let sentence = paragraph[start..end].trim();
        if !sentence.is_empty() {
            out.push((sentence, sep));
            sep = if newline { Sep::Line } else { Sep::Space };
        }
        start = chars.get(i).map_or(paragraph.len(), |&(at, _)| at);
    }
    let rest = paragraph[start..].trim();
    if !rest.is_empty() {
        out.push((rest, sep));
    }
    out
}

/// Runs of whole words of at most `limit` characters, keeping the original spacing inside a run.
/// A single word longer than `limit` is a run of its own: words are never cut.
fn word_runs<'a>(sentence: &'a str, first_sep: Sep, limit: usize, units: &mut Vec<Unit<'a>>) {
    let mut run: Option<(usize, usize, usize)> = None; // (start byte, end byte, chars)
    let mut sep = first_sep;
    for (start, word) in words(sentence) {
        let end = start + word.len();
        let word_chars = word.chars().count();
        if let Some((run_start, run_end, run_chars)) = run {
            let gap = sentence[run_end..start].chars().count();
            if run_chars + gap + word_chars <= limit {
                run = Some((run_start, end, run_chars + gap + word_chars));
                continue;
            }
            units.push(Unit {
                text: &sentence[run_start..run_end],
                chars: run_chars,
                sep,
            });
            sep = Sep::Space;
        }
        run = Some((start, end, word_chars));
    }
    if let Some((run_start, run_end, run_chars)) = run {
        units.push(Unit {
            text: &sentence[run_start..run_end],
            chars: run_chars,
            sep,
        });
    }
}

/// Whitespace-separated words with their byte offsets.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_whitespace().map(move |word| {
        // `split_whitespace` yields subslices of `text`, so the pointer difference is the offset.
        (word.as_ptr() as usize - text.as_ptr() as usize, word)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn new_words(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .flat_map(|p| p.text[p.overlap_len..].split_whitespace().map(str::to_owned))
            .collect()
    }

    #[test]
    fn blank_text_has_no_chunks() {
        assert!(chunk_text("", 100, 10).is_empty());
        assert!(chunk_text(" \n\n \t\n", 100, 10).is_empty());
    }

    #[test]
    fn short_paragraphs_share_a_chunk() {
        let text = "# Title\n\nFirst paragraph.\n\n\nSecond one.\n";
        assert_eq!(
            chunk_text(text, 100, 10),
            ["# Title\n\nFirst paragraph.\n\nSecond one."]
        );
    }

    #[test]
    fn paragraphs_that_do_not_fit_start_a_new_chunk_with_an_overlap() {
        let text = "alpha beta gamma delta\n\nepsilon zeta eta theta";
        let chunks = chunk_text(text, 40, 11);
        assert_eq!(
            chunks,
            ["alpha beta gamma delta", "gamma delta\n\nepsilon zeta eta theta"]
        );
    }

    #[test]
    fn long_paragraphs_split_at_sentences() {
        let text = "One two three. Four five six! Seven \"eight.\" Nine ten?";
        let chunks = chunk_text(text, 30, 0);
        assert_eq!(
            chunks,
            ["One two three. Four five six!", "Seven \"eight.\" Nine ten?"]
        );
    }

    #[test]
    fn line_breaks_are_sentence_boundaries_and_are_kept() {
        let text = "- item one\n- item two\n- item three";
        let chunks = chunk_text(text, 24, 0);
        assert_eq!(chunks, ["- item one\n- item two", "- item three"]);
    }

    #[test]
    fn long_sentences_split_between_words() {
        let text = "aa bb cc dd ee ff gg hh";
        let chunks = chunk_text(text, 8, 0);
        assert_eq!(chunks, ["aa bb cc", "dd ee ff", "gg hh"]);
        let chunks = chunk_text(text, 8, 3);
        assert_eq!(chunks, ["aa bb cc", "cc dd ee", "ee ff gg", "gg hh"]);
    }

    #[test]
    fn a_word_longer_than_a_chunk_is_kept_whole() {
        let chunks = chunk_text("tiny enormousword tiny", 5, 2);
        assert_eq!(chunks, ["tiny", "enormousword", "tiny"]);
    }

    #[test]
    fn sizes_count_characters_not_bytes() {
        let text = "ééé ééé ééé";
        assert_eq!(chunk_text(text, 7, 0), ["ééé ééé", "ééé"]);
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        assert_eq!(chunk_text("a b", 0, 0), ["a", "b"]);
        assert_eq!(chunk_text("a b", 1, 5), ["a", "b"]);
    }

    #[test]
    fn word_tail_starts_at_a_word() {
        assert_eq!(word_tail("one two three", 5), "three");
        assert_eq!(word_tail("one two three", 9), "two three");
        assert_eq!(word_tail("one two three", 4), "");
        assert_eq!(word_tail("one two three", 100), "one two three");
        assert_eq!(word_tail("one two", 0), "");
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        // Words, punctuation, spaces, line breaks and blank lines, with some non-ASCII and some
        // long words, so every splitting path is taken.
        let token = prop_oneof![
            4 => "[a-z]{1,8}",
            1 => "[A-Zé]{1,3}[.!?]",
            1 => "[a-z]{15,40}",
            1 => Just("\n".to_owned()),
            1 => Just("\n\n".to_owned()),
            1 => Just("  ".to_owned()),
            1 => Just("\"quoted.\"".to_owned()),
        ];
        prop::collection::vec(token, 0..200).prop_map(|tokens| tokens.join(" "))
    }

    proptest! {
        #[test]
        fn every_word_is_kept_in_order(
            text in text_strategy(), limit in 1usize..120, overlap in 0usize..60,
        ) {
            let pieces = pieces(&text, limit, overlap);
            let expected: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
            prop_assert_eq!(new_words(&pieces), expected);
        }

        #[test]
        fn chunks_stay_within_the_size_unless_one_long_word(
            text in text_strategy(), limit in 1usize..120, overlap in 0usize..60,
        ) {
            for piece in pieces(&text, limit, overlap) {
                let chars = piece.text.chars().count();
                prop_assert!(
                    chars <= limit || !piece.text.contains(char::is_whitespace),
                    "{chars} > {limit}: {:?}", piece.text
                );
            }
        }

        #[test]
        fn overlaps_are_whole_words_from_the_previous_chunk(
            text in text_strategy(), limit in 2usize..120, overlap in 0usize..60,
        ) {
            let overlap = overlap.min(limit - 1);
            let pieces = pieces(&text, limit, overlap);
            prop_assert_eq!(pieces.first().map_or(0, |p| p.overlap_len), 0);
            for pair in pieces.windows(2) {
                let repeated = pair[1].text[..pair[1].overlap_len].trim_end();
                prop_assert!(repeated.chars().count() <= overlap);
                prop_assert!(pair[0].text.ends_with(repeated));
                if !repeated.is_empty() {
                    // Starts at a word of the previous chunk: nothing before it, or whitespace.
                    let before = &pair[0].text[..pair[0].text.len() - repeated.len()];
                    prop_assert!(before.is_empty() || before.ends_with(char::is_whitespace));
                }
            }
        }
    }
}
