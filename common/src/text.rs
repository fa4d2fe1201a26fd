//! Text that others wrote (class, dataset and job names, ids, hostnames, failure reasons,
//! paths), made safe to print on a terminal: on a shared cluster a name must not be able to
//! clear the screen, retitle the window or show itself reversed.

use std::borrow::Cow;
use std::path::Path;

/// `text` with every control character and bidirectional formatting character replaced by
/// its escape (`\u{1b}`, `\n`, `\u{202e}`); all other text, "é" or "惊讶" included, is
/// unchanged (and borrowed).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`printable`] for a path, shown lossily where it is not UTF-8.
pub fn printable_path(path: &Path) -> String {
    printable(&path.to_string_lossy()).into_owned()
}

/// Control characters (C0, DEL, C1) and the characters that reorder text: the embeddings
/// and overrides (U+202A–U+202E), the isolates (U+2066–U+2069) and the marks (U+200E,
/// U+200F, U+061C).
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_characters_are_escaped_and_other_text_kept() {
        assert_eq!(printable("\u{1b}]0;title\u{7}"), "\\u{1b}]0;title\\u{7}");
        assert_eq!(printable("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(printable("a\nb\tc\r\u{7f}\u{9b}"), "a\\nb\\tc\\r\\u{7f}\\u{9b}");
        assert_eq!(printable("gpj.\u{202e}exe"), "gpj.\\u{202e}exe");
        for bidi in ['\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202D}', '\u{2066}', '\u{2069}'] {
            assert_eq!(printable(&format!("x{bidi}y")), format!("x\\u{{{:x}}}y", bidi as u32));
        }
        for plain in ["happy", "é", "惊讶", "ü/ñ ω", "😀", "job-1 \\u{1b}"] {
            assert!(matches!(printable(plain), Cow::Borrowed(text) if text == plain), "{plain}");
        }
        assert_eq!(printable_path(Path::new("/data/\u{1b}[2J/é")), "/data/\\u{1b}[2J/é");
    }
}
