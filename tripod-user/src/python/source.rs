//! Source lines of Python frames, shown under each frame of a traceback as
//! Python's own tracebacks (and Tripod's log) show them.
//!
//! The file is the target's: a `co_filename` read from its memory, opened
//! as the target sees it (inside its `/proc/PID/root`, relative names
//! against its `/proc/PID/cwd`) under the target-file policy, and cut to a
//! bounded size. Each file is read once per process; a file that cannot be
//! read just has no source lines.
use std::{
    collections::HashMap,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{target_file, text::escape_controls};

/// Largest source file read; Python modules are far smaller.
const MAX_FILE: u64 = 4 << 20;
/// Most bytes of source kept in memory over the whole run; past it, files
/// not read yet show no source.
const MAX_TOTAL: usize = 64 << 20;
/// Characters of a line shown before it is cut.
const MAX_LINE_CHARS: usize = 200;

/// A file's lines; `None` for a file that could not be read.
type Lines = Option<Arc<[Box<str>]>>;

/// Source files read so far, by process and name.
#[derive(Default)]
pub struct Sources {
    files: HashMap<(u32, Arc<str>), Lines>,
    bytes: usize,
}

impl Sources {
    /// Line `line` (1-based) of `file` as process `pid` sees it, stripped of
    /// its indentation and with control characters escaped; `None` if the
    /// file cannot be read or has no such line.
    pub fn line(&mut self, pid: u32, file: &Arc<str>, line: u32) -> Option<String> {
        let key = (pid, file.clone());
        if !self.files.contains_key(&key) {
            let lines = self.read(pid, file);
            self.files.insert(key.clone(), lines);
        }
        let lines = self.files.get(&key)?.as_ref()?;
        let text = lines.get((line as usize).checked_sub(1)?)?.trim();
        (!text.is_empty()).then(|| shown(text))
    }

    fn read(&mut self, pid: u32, file: &str) -> Lines {
        if self.bytes >= MAX_TOTAL {
            return None;
        }
        let (root, path) = where_to_open(pid, file)?;
        let mut opened =
            target_file::open_in_root(&root, &path, target_file::Links::Follow, MAX_FILE)
                .map_err(|refusal| log::debug!("no source lines: {refusal}"))
                .ok()?;
        let mut bytes = Vec::new();
        // The size was checked on the descriptor; `take` bounds a file that grows.
        (&mut opened).take(MAX_FILE).read_to_end(&mut bytes).ok()?;
        self.bytes += bytes.len();
        let text = String::from_utf8_lossy(&bytes);
        Some(text.lines().map(Box::from).collect())
    }
}

/// The directory to resolve `file` in and the path inside it: absolute
/// names in the process's root, relative ones in its working directory.
/// Names CPython gives code that has no file (`<string>`, `<frozen ...>`)
/// are not files.
fn where_to_open(pid: u32, file: &str) -> Option<(PathBuf, PathBuf)> {
    if file.is_empty() || file.starts_with('<') {
        return None;
    }
    let path = Path::new(file);
    let base = if path.is_absolute() { "root" } else { "cwd" };
    Some((
        PathBuf::from(format!("/proc/{pid}/{base}")),
        path.to_path_buf(),
    ))
}

/// A line as shown: escaped, and cut with a visible marker.
fn shown(text: &str) -> String {
    let mut chars = text.char_indices();
    match chars.nth(MAX_LINE_CHARS) {
        Some((at, _)) => format!("{}...[cut]", escape_controls(&text[..at])),
        None => escape_controls(text).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_this_processs_files_are_read_once_and_shown_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.py");
        let long = "x".repeat(300);
        std::fs::write(&file, format!("def f():\n    return 1\x1b[2J\n\n{long}\n")).unwrap();
        let name: Arc<str> = Arc::from(file.to_str().unwrap());
        let mut sources = Sources::default();
        let pid = std::process::id();
        assert_eq!(sources.line(pid, &name, 1).as_deref(), Some("def f():"));
        assert_eq!(
            sources.line(pid, &name, 2).as_deref(),
            Some("return 1\\x1b[2J")
        );
        // Blank lines, lines past the end and line 0 show nothing.
        assert_eq!(sources.line(pid, &name, 3), None);
        assert_eq!(sources.line(pid, &name, 9), None);
        assert_eq!(sources.line(pid, &name, 0), None);
        let cut = sources.line(pid, &name, 4).unwrap();
        assert_eq!(cut, format!("{}...[cut]", "x".repeat(200)));
        // Read once: removing the file changes nothing for this process.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(sources.line(pid, &name, 1).as_deref(), Some("def f():"));
    }

    #[test]
    fn names_that_are_not_files_are_not_opened() {
        let mut sources = Sources::default();
        for name in [
            "<string>",
            "<frozen importlib._bootstrap>",
            "",
            "/no/such/file.py",
        ] {
            assert_eq!(sources.line(std::process::id(), &Arc::from(name), 1), None);
        }
    }
}
