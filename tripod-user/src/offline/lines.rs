//! Text inputs read line by line: memory follows the longest line kept (at
//! most [`MAX_TEXT_LINE`]), never the file. Lines past the cap are cut and
//! counted, as are lines a parser could not read, so a garbled or truncated
//! dump still shows what parses and says what did not.
use std::io::{self, BufRead};

use crate::error::UsageError;

/// The longest line of a text dump kept: gdb's `bt full` prints structures
/// on one line, but not megabytes of them.
pub const MAX_TEXT_LINE: usize = 64 << 10;

/// One line of text, without its line ending.
pub struct Line {
    /// From 1.
    pub number: usize,
    pub text: String,
    /// Longer than [`MAX_TEXT_LINE`]: only its start is in `text`.
    pub cut: bool,
}

/// The lines of a stream.
pub struct TextLines<R> {
    reader: R,
    number: usize,
    buffer: Vec<u8>,
}

impl<R: BufRead> TextLines<R> {
    pub fn new(reader: R) -> TextLines<R> {
        TextLines {
            reader,
            number: 0,
            buffer: Vec::new(),
        }
    }

    /// The next line; bytes that are not UTF-8 show as U+FFFD (every name
    /// is escaped again where it enters the model).
    pub fn next_line(&mut self) -> Result<Option<Line>, UsageError> {
        self.buffer.clear();
        let cut = read_capped(&mut self.reader, &mut self.buffer, MAX_TEXT_LINE)
            .map_err(|e| UsageError(format!("cannot read: {e}")))?;
        let Some(cut) = cut else {
            return Ok(None);
        };
        self.number += 1;
        if self.buffer.last() == Some(&b'\r') {
            self.buffer.pop();
        }
        Ok(Some(Line {
            number: self.number,
            text: String::from_utf8_lossy(&self.buffer).into_owned(),
            cut,
        }))
    }
}

/// Reads one line (without its `\n`) into `buffer`, keeping at most `cap`
/// bytes and skipping the rest of a longer one. None at the end of input;
/// else whether the line was cut.
fn read_capped(
    reader: &mut impl BufRead,
    buffer: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<bool>> {
    let mut any = false;
    let mut cut = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(any.then_some(cut));
        }
        any = true;
        let (chunk, end) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], Some(at + 1)),
            None => (available, None),
        };
        let room = cap.saturating_sub(buffer.len());
        cut |= chunk.len() > room;
        buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = end.unwrap_or(available.len());
        reader.consume(used);
        if end.is_some() {
            return Ok(Some(cut));
        }
    }
}

/// Lines a parser could not read: how many and the first one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub count: usize,
    pub first: Option<usize>,
}

impl Skipped {
    pub fn add(&mut self, line: usize) {
        self.count += 1;
        self.first.get_or_insert(line);
    }

    /// `3 lines of gdb.txt were not understood and skipped (the first: line 12)`.
    pub fn message(&self, name: &str) -> Option<String> {
        let first = self.first?;
        Some(format!(
            "{} of {name} {} not understood and skipped (the first: line {first}); \
             what parsed is shown",
            if self.count == 1 {
                "1 line".to_string()
            } else {
                format!("{} lines", self.count)
            },
            if self.count == 1 { "was" } else { "were" },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_and_the_next_one_read_whole() {
        let text = format!("{}\nshort\r\nlast", "x".repeat(MAX_TEXT_LINE + 10));
        let mut lines = TextLines::new(io::BufReader::with_capacity(100, text.as_bytes()));
        let first = lines.next_line().unwrap().unwrap();
        assert!(first.cut);
        assert_eq!(first.text.len(), MAX_TEXT_LINE);
        let second = lines.next_line().unwrap().unwrap();
        assert_eq!(
            (second.number, second.text.as_str(), second.cut),
            (2, "short", false)
        );
        assert_eq!(lines.next_line().unwrap().unwrap().text, "last");
        assert!(lines.next_line().unwrap().is_none());
    }

    #[test]
    fn skipped_lines_are_counted_from_the_first() {
        let mut skipped = Skipped::default();
        assert_eq!(skipped.message("f"), None);
        skipped.add(12);
        skipped.add(15);
        assert_eq!(
            skipped.message("gdb.txt").unwrap(),
            "2 lines of gdb.txt were not understood and skipped (the first: line 12); what parsed is shown"
        );
    }
}
