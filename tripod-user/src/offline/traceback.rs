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
    let mut reader = Reader::default();
    while let Some(line) = lines.next_line()? {
        reader.line(line.number, &line.text);
    }
    Ok(reader.finish())
}

/// The tracebacks read so far, and where the reader is in the current one.
struct Reader {
    groups: HashMap<Vec<Exception>, (u64, usize)>,
    skipped: Skipped,
    within: Within,
    /// The shape of the current traceback's prefix.
    prefix: String,
    current: Occurrence,
}

impl Default for Reader {
    fn default() -> Reader {
        Reader {
            groups: HashMap::new(),
            skipped: Skipped::default(),
            within: Within::Outside,
            prefix: String::new(),
            current: Occurrence::default(),
        }
    }
}

impl Reader {
    fn line(&mut self, number: usize, text: &str) {
        if let Some(at) = text.find(START) {
            // A chain goes on after its sentence; anything else starts anew.
            if self.within != Within::Raised || self.current.link.is_none() {
                self.end_occurrence();
                self.current.first_line = number;
            }
            self.prefix = shape(&text[..at]);
            self.within = Within::Frames;
            self.current.frames.clear();
            return;
        }
        if self.within == Within::Outside {
            return;
        }
        let text = strip_prefix(text, &self.prefix);
        if self.within == Within::Raised {
            let trimmed = text.trim();
            if let Some(link) = [Link::Context, Link::Cause]
                .into_iter()
                .find(|l| l.sentence() == trimmed)
            {
                self.current.link = Some(link);
            } else if !trimmed.is_empty() {
                self.end_occurrence();
            }
            return;
        }
        match frames_line(text, &mut self.current.frames) {
            Step::More => {}
            Step::Raised(kind, message) => {
                let current = &mut self.current;
                current.chain.push(Exception {
                    link: current.link.take(),
                    kind,
                    message,
                    frames: current.frames.drain(..).map(Arc::new).collect(),
                });
                self.within = Within::Raised;
            }
            Step::NotATraceback => {
                self.skipped.add(number);
                self.current = Occurrence::default();
                self.within = Within::Outside;
            }
        }
    }

    /// Counts the traceback just read, if it reached its exception; one cut
    /// off before it is counted as skipped.
    fn end_occurrence(&mut self) {
        let occurrence = std::mem::take(&mut self.current);
        let within = std::mem::replace(&mut self.within, Within::Outside);
        if within == Within::Frames {
            self.skipped.add(occurrence.first_line);
            return;
        }
        if occurrence.chain.is_empty() {
            return;
        }
        let room = self.groups.len() < MAX_DISTINCT;
        match self.groups.get_mut(&occurrence.chain) {
            Some(group) => group.0 += 1,
            None if room => {
                self.groups
                    .insert(occurrence.chain, (1, occurrence.first_line));
            }
            None => self.skipped.add(occurrence.first_line),
        }
    }

    fn finish(mut self) -> Parsed {
        self.end_occurrence();
        let groups = self
            .groups
            .into_iter()
            .map(|(chain, (count, first_line))| ExceptionGroup {
                count,
                first_line,
                chain,
            })
            .collect();
        Parsed {
            groups,
            skipped: self.skipped,
        }
    }
}

/// What a line between `Traceback` and the exception was.
enum Step {
    /// A frame or its source: more to come.
    More,
    /// The exception line: its type and message.
    Raised(String, Option<String>),
    /// Neither: not a traceback after all.
    NotATraceback,
}

/// One line between `Traceback` and the exception.
fn frames_line(text: &str, frames: &mut Vec<Frame>) -> Step {
    if let Some(rest) = text.strip_prefix("  File \"") {
        return match frame(rest) {
            Some(frame) => {
                frames.push(frame);
                Step::More
            }
            None => Step::NotATraceback,
        };
    }
    if text.starts_with("    ") {
        let source = text.trim();
        let marker = source.chars().all(|c| matches!(c, '^' | '~' | '-' | ' '));
        if let (false, Some(last)) = (marker, frames.last_mut()) {
            last.source.get_or_insert_with(|| shown(source).to_string());
        }
        return Step::More;
    }
    if text.trim_start().starts_with("[Previous line repeated") {
        return Step::More;
    }
    match exception_line(text) {
        Some((kind, message)) => Step::Raised(kind, message),
        None => Step::NotATraceback,
    }
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
