//! Text that came from a target, made safe to show. Function, file, module,
//! process and thread names are chosen by whoever owns the target (any Python
//! script can set `co_name`; any program can name its threads or files), and
//! tripod-bpf writes them to root's terminal and to line-oriented files. A
//! raw ESC could retitle or clear the terminal, a CR or LF forge lines, a NUL
//! cut a C reader short. So every such name goes through [`escape_controls`]
//! once, where it enters the report model (when it is read or looked up, not
//! per sample), and every renderer gets visible escapes instead.
//!
//! This module is a leaf: it depends on nothing else in the crate.
use std::{borrow::Cow, fmt::Write as _, sync::Arc};

/// Whether `c` is a control character: C0 (U+0000 to U+001F, including tab,
/// CR and LF), DEL (U+007F) or C1 (U+0080 to U+009F, which some terminals
/// obey like ESC sequences: U+009B is CSI).
pub fn is_control(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}')
}

/// Appends the visible escape of `c`: `\x` and two hex digits of its code
/// point, as Python writes it in a str repr (`\x1b`, `\x0a`, `\x9b`).
pub fn push_escape(out: &mut String, c: char) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{:02x}", c as u32);
}

/// `text` with each control character (see [`is_control`]) replaced by its
/// visible escape (see [`push_escape`]); everything else, including valid
/// non-ASCII text and backslashes, unchanged. Text without controls, nearly
/// all of it, is borrowed as it is, without allocating.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let Some(first) = first_control(text) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        if is_control(c) {
            push_escape(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Where the first control character starts, by bytes: thread names are
/// checked on every sample, and a byte scan is several times faster than
/// decoding characters. In UTF-8, C0 and DEL are single bytes, and C1 is
/// 0xC2 followed by 0x80 to 0x9F.
fn first_control(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    // Without early exit, the compiler vectorizes this pass over clean text.
    let suspect = bytes.iter().fold(false, |seen, &b| {
        seen | (b < 0x20) | (b == 0x7f) | (b == 0xc2)
    });
    if !suspect {
        return None;
    }
    let mut from = 0;
    while let Some(found) = bytes[from..]
        .iter()
        .position(|&b| b < 0x20 || b == 0x7f || b == 0xc2)
    {
        let at = from + found;
        if bytes[at] != 0xc2 || matches!(bytes.get(at + 1), Some(0x80..=0x9f)) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// [`escape_controls`] for a string already owned: returned as it is when
/// it holds no control character.
/// [`escape_controls`] of a shared string: the same allocation when there
/// is nothing to escape, as for almost every name.
pub fn escape_controls_shared(text: &Arc<str>) -> Arc<str> {
    match escape_controls(text) {
        Cow::Borrowed(_) => text.clone(),
        Cow::Owned(escaped) => escaped.into(),
    }
}

pub fn escape_controls_owned(text: String) -> String {
    if first_control(&text).is_some() {
        escape_controls(&text).into_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_become_visible_escapes() {
        assert_eq!(
            escape_controls("evil\x1b]0;pwned\x07\r\nFAKE"),
            "evil\\x1b]0;pwned\\x07\\x0d\\x0aFAKE"
        );
        assert_eq!(escape_controls("a\0b"), "a\\x00b");
        assert_eq!(escape_controls("tab\there"), "tab\\x09here");
        assert_eq!(escape_controls("del\x7f"), "del\\x7f");
        assert_eq!(escape_controls("\x1b[2J"), "\\x1b[2J");
    }

    #[test]
    fn c1_controls_are_escaped_and_other_unicode_kept() {
        // U+009B is CSI, U+0085 NEL (a line break for some readers).
        assert_eq!(escape_controls("a\u{9b}31mb\u{85}"), "a\\x9b31mb\\x85");
        // U+00A0 is the first character after C1: kept, as is all valid UTF-8.
        let text = "é\u{a0}ü日本語🙂 \\x1b";
        assert_eq!(escape_controls(text), text);
        assert_eq!(escape_controls("日\x1b本"), "日\\x1b本");
        // U+00A0 and U+0085 share their first byte, 0xC2.
        assert_eq!(escape_controls("\u{a0}\u{85}\u{a0}"), "\u{a0}\\x85\u{a0}");
    }

    #[test]
    fn clean_text_is_borrowed() {
        for text in [
            "",
            "main",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "<module>",
            "ünïcödé",
        ] {
            assert!(
                matches!(escape_controls(text), Cow::Borrowed(t) if t == text),
                "{text:?} was copied"
            );
        }
        assert!(matches!(escape_controls("a\nb"), Cow::Owned(_)));
    }

    #[test]
    fn owned_text_is_escaped_the_same() {
        let clean = String::from("spin");
        let pointer = clean.as_ptr();
        let kept = escape_controls_owned(clean);
        assert_eq!(kept.as_ptr(), pointer, "clean text was reallocated");
        assert_eq!(escape_controls_owned("x\ny".into()), "x\\x0ay");
    }

    #[test]
    fn no_control_survives() {
        let every: String = (0u32..0x200).filter_map(char::from_u32).collect();
        let escaped = escape_controls(&every);
        assert!(!escaped.chars().any(is_control), "{escaped:?}");
        // Each of the 65 controls became 4 characters; nothing else changed.
        let controls = every.chars().filter(|&c| is_control(c)).count();
        assert_eq!(controls, 65);
        assert_eq!(
            escaped.chars().count(),
            every.chars().count() + 3 * controls
        );
    }
}
