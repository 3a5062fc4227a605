//! Python tracebacks anywhere in a log, as `traceback.print_exc` and
//! `logging.exception` write them, with chained exceptions, the `^^^^` and
//! `~~~^^^` markers of 3.11+, and with or without a logging prefix
//! (timestamp, level) in front of every line:
//!
//! ```text
//! 2026-12-05 02:50:01,123 ERROR Traceback (most recent call last):
//! 2026-12-05 02:50:01,123 ERROR   File "app.py", line 9, in parse
//! 2026-12-05 02:50:01,123 ERROR     return int(text)
//! 2026-12-05 02:50:01,123 ERROR            ^^^^^^^^^
//! 2026-12-05 02:50:01,123 ERROR ValueError: invalid literal for int() with base 10: 'x'
//! ```
//!
//! The prefix is the text before `Traceback`; a later line loses as many
//! characters when they have the same shape (digits may differ).
use std::{collections::HashMap, io::BufRead, sync::Arc};

use crate::{
    error::UsageError,
    exceptions::{Exception, ExceptionGroup, Link},
    model::Frame,
};

use super::{
    lines::{Skipped, TextLines},
    threads::shown,
};

const START: &str = "Traceback (most recent call last):";

/// Distinct tracebacks kept; a log of millions of different ones is
/// summarised by its first ones, and the rest are counted as skipped.
pub const MAX_DISTINCT: usize = 10_000;

/// Where the parser is within a traceback.
#[derive(PartialEq)]
enum Within {
    Outside,
    Frames,
    /// After an exception line: a chain may go on.
    Raised,
}

#[derive(Default)]
struct Occurrence {
    chain: Vec<Exception>,
    link: Option<Link>,
    frames: Vec<Frame>,
    first_line: usize,
}

pub struct Parsed {
    pub groups: Vec<ExceptionGroup>,
    pub skipped: Skipped,
}

pub fn parse(lines: &mut TextLines<impl BufRead>) -> Result<Parsed, UsageError> {
    let mut groups: HashMap<Vec<Exception>, (u64, usize)> = HashMap::new();
    let mut skipped = Skipped::default();
    let mut within = Within::Outside;
    let mut prefix = String::new();
    let mut current = Occurrence::default();
    let mut finish = |current: &mut Occurrence, skipped: &mut Skipped| {
        let occurrence = std::mem::take(current);
        if occurrence.chain.is_empty() {
            return;
        }
        let room = groups.len() < MAX_DISTINCT;
        match groups.get_mut(&occurrence.chain) {
            Some(group) => group.0 += 1,
            None if room => {
                groups.insert(occurrence.chain, (1, occurrence.first_line));
            }
            None => skipped.add(occurrence.first_line),
        }
    };
    while let Some(line) = lines.next_line()? {
        if let Some(at) = line.text.find(START) {
            if within != Within::Raised || current.link.is_none() {
                if within == Within::Frames {
                    // A traceback cut off before its exception.
                    skipped.add(current.first_line);
                    current = Occurrence::default();
                }
                finish(&mut current, &mut skipped);
                current.first_line = line.number;
            }
            prefix = shape(&line.text[..at]);
            within = Within::Frames;
            current.frames.clear();
            continue;
        }
        if within == Within::Outside {
            continue;
        }
        let text = strip_prefix(&line.text, &prefix);
        match within {
            Within::Frames => {
                if let Some(exception) = frames_line(text, &mut current.frames) {
                    match exception {
                        Some((kind, message)) => {
                            current.chain.push(Exception {
                                link: current.link.take(),
                                kind,
                                message,
                                frames: current.frames.drain(..).map(Arc::new).collect(),
                            });
                            within = Within::Raised;
                        }
                        None => {
                            skipped.add(line.number);
                            current = Occurrence::default();
                            within = Within::Outside;
                        }
                    }
                }
            }
            Within::Raised => {
                let trimmed = text.trim();
                if let Some(link) = [Link::Context, Link::Cause]
                    .into_iter()
                    .find(|l| l.sentence() == trimmed)
                {
                    current.link = Some(link);
                } else if !trimmed.is_empty() {
                    finish(&mut current, &mut skipped);
                    within = Within::Outside;
                }
            }
            Within::Outside => {}
        }
    }
    if within == Within::Frames {
        skipped.add(current.first_line);
    } else {
        finish(&mut current, &mut skipped);
    }
    let groups = groups
        .into_iter()
        .map(|(chain, (count, first_line))| ExceptionGroup {
            count,
            first_line,
            chain,
        })
        .collect();
    Ok(Parsed { groups, skipped })
}

/// One line between `Traceback` and the exception: a frame or its source
/// (None: more to come), or the exception line (`Some(Some)`), or neither
/// (`Some(None)`: not a traceback after all).
#[allow(clippy::option_option)]
fn frames_line(text: &str, frames: &mut Vec<Frame>) -> Option<Option<(String, Option<String>)>> {
    if let Some(rest) = text.strip_prefix("  File \"") {
        return match frame(rest) {
            Some(frame) => {
                frames.push(frame);
                None
            }
            None => Some(None),
        };
    }
    if text.starts_with("    ") {
        let source = text.trim();
        let marker = source.chars().all(|c| matches!(c, '^' | '~' | '-' | ' '));
        if let (false, Some(last)) = (marker, frames.last_mut()) {
            last.source.get_or_insert_with(|| shown(source).to_string());
        }
        return None;
    }
    if text.trim_start().starts_with("[Previous line repeated") {
        return None;
    }
    Some(exception_line(text))
}

/// `  File "app.py", line 9, in parse` after its `  File "`.
fn frame(rest: &str) -> Option<Frame> {
    let (file, rest) = rest.split_once("\", line ")?;
    let (line, function) = match rest.split_once(", in ") {
        Some((line, function)) => (line, Some(function)),
        None => (rest, None),
    };
    let mut frame = Frame::python();
    frame.file = Some(shown(file));
    frame.line = line.trim().parse().ok();
    frame.function = function.map(shown);
    Some(frame)
}

/// `ValueError: message`, `module.Error: message` or a bare `KeyboardInterrupt`.
fn exception_line(text: &str) -> Option<(String, Option<String>)> {
    let (kind, message) = match text.split_once(": ") {
        Some((kind, message)) => (kind, Some(message)),
        None => (text.strip_suffix(':').unwrap_or(text), None),
    };
    let is_name = !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
        && !kind.starts_with(|c: char| c.is_ascii_digit() || c == '.');
    is_name.then(|| {
        (
            shown(kind).to_string(),
            message.map(|m| shown(m).to_string()),
        )
    })
}

/// A prefix with its digits made alike: `2026-12-05 02:50:01,123 ERROR `.
fn shape(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect()
}

/// The line without the traceback's prefix, when it carries one of the same shape.
fn strip_prefix<'a>(text: &'a str, prefix: &str) -> &'a str {
    if prefix.is_empty() {
        return text;
    }
    match text.get(..prefix.len()) {
        Some(head) if shape(head) == prefix => &text[prefix.len()..],
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Parsed {
        parse(&mut TextLines::new(text.as_bytes())).unwrap()
    }

    const CHAINED: &str = "\
Traceback (most recent call last):
  File \"/app/a.py\", line 3, in load
    return table[key]
           ~~~~~^^^^^
KeyError: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File \"/app/a.py\", line 9, in <module>
    load()
  File \"/app/a.py\", line 5, in load
    raise ValueError(\"no x\")
ValueError: no x
";

    #[test]
    fn chained_exceptions_are_one_traceback() {
        let text = format!("starting\n{CHAINED}next line\n{CHAINED}");
        let parsed = parse_text(&text);
        assert_eq!(parsed.groups.len(), 1);
        let group = &parsed.groups[0];
        assert_eq!((group.count, group.first_line), (2, 2));
        assert_eq!(group.chain.len(), 2);
        assert_eq!(group.chain[0].title(), "KeyError: 'x'");
        assert_eq!(
            group.chain[0].frames[0].source.as_deref(),
            Some("return table[key]")
        );
        assert_eq!(group.chain[1].link, Some(Link::Context));
        assert_eq!(group.raised().title(), "ValueError: no x");
        assert_eq!(group.raised().functions(), ["<module>", "load"]);
        assert_eq!(parsed.skipped.count, 0);
    }

    #[test]
    fn prefixes_on_every_line_are_stripped_and_a_cut_traceback_counted() {
        let text = "\
2026-12-05 02:50:01,123 ERROR Traceback (most recent call last):
2026-12-05 02:50:01,123 ERROR   File \"app.py\", line 9, in parse
2026-12-05 02:50:01,123 ERROR     return int(text)
2026-12-05 02:50:01,124 ERROR ValueError: invalid literal
2026-12-05 02:50:02,000 INFO  carrying on
Traceback (most recent call last):
  File \"app.py\", line 9, in parse
";
        let parsed = parse_text(text);
        assert_eq!(parsed.groups.len(), 1);
        let raised = parsed.groups[0].raised();
        assert_eq!(raised.title(), "ValueError: invalid literal");
        assert_eq!(raised.frames[0].line, Some(9));
        assert_eq!((parsed.skipped.count, parsed.skipped.first), (1, Some(6)));
    }
}
