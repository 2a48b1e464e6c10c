//! Text from outside (a scanned barcode, a device's answer, a plugin's or a
//! script's message) made safe to show on an operator's terminal: the one
//! escaping function every printed line goes through, and a cut that keeps
//! character boundaries.
//!
//! A barcode is bytes someone else chose: `\x1b[31m` recolours the terminal,
//! `\x1b]0;…\x07` retitles it, and worse sequences exist. [`printable`] turns
//! every control character (C0, DEL, C1) and the invisible formatting
//! characters that reorder or hide text (bidirectional overrides, zero-width
//! characters) into visible escapes (`\x1b`, `\u{202e}`); everything else is
//! left as it is.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as itself.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'   // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202E}' // line/paragraph separators, bidi embeddings and overrides
            | '\u{2060}'..='\u{206F}' // word joiner, invisible operators, bidi isolates
            | '\u{FEFF}'              // zero-width no-break space (BOM)
            | '\u{FFF9}'..='\u{FFFB}' // interlinear annotation
        )
}

/// Whether `text` shows as itself (nothing in it needs escaping).
pub fn is_printable(text: &str) -> bool {
    !text.chars().any(needs_escape)
}

/// `text` with every control or invisible formatting character escaped
/// (`\x1b`, `\u{202e}`); borrowed when there is nothing to escape.
pub fn printable(text: &str) -> Cow<'_, str> {
    if is_printable(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// Escapes every string inside a JSON value with [`printable`] (keys too).
pub fn printable_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Cow::Owned(o) = printable(s) {
                *s = o;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(printable_json),
        Value::Object(map) => {
            if map.keys().any(|k| matches!(printable(k), Cow::Owned(_))) {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(printable(&k).into_owned(), v);
                }
            }
            map.values_mut().for_each(printable_json);
        }
        _ => {}
    }
}

/// The first `max` characters of `text`.
pub fn cut(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// At most `max` characters of `text`, escaped with [`printable`], with
/// "..." where it was cut: what an error file or a log line may keep of
/// something read from outside.
pub fn excerpt(text: &str, max: usize) -> String {
    let kept = cut(text, max);
    let mut out = printable(kept).into_owned();
    if kept.len() < text.len() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sequences_are_escaped() {
        assert_eq!(
            printable("\x1b[31mRED\x1b]0;title\x07: x"),
            "\\x1b[31mRED\\x1b]0;title\\x07: x"
        );
        assert_eq!(
            printable("a\tb\r\nc\x7f\u{9b}"),
            "a\\x09b\\x0d\\x0ac\\x7f\\x9b"
        );
        assert_eq!(printable("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert!(matches!(
            printable("3012-000001 ok é 日本"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut v = serde_json::json!({"scan": "\x1b[2J", "list": ["\x07"], "n": 1, "\x1bk": true});
        printable_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"scan": "\\x1b[2J", "list": ["\\x07"], "n": 1, "\\x1bk": true})
        );
    }

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(cut("日本語", 2), "日本");
        assert_eq!(cut("ab", 5), "ab");
        assert_eq!(cut("", 0), "");
    }
}
