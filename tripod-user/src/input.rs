//! Files tripod-bpf reads because the user named them (`--rules`, `report
//! FILE`). Running as root, it must not hang on a FIFO nobody writes, read a
//! device such as /dev/zero forever, or load a huge file whole: each is opened
//! without blocking, checked to be a regular file through the descriptor
//! itself (no race with a rename), and read at most up to a limit.
use std::{
    fs::File,
    io::{self, Read as _},
    path::Path,
};

use crate::{
    error::UsageError,
    target_file::{self, Links, Why},
};

/// The largest `--rules` file: rules are a few lines each, so 1 MiB is
/// thousands of them.
pub const MAX_RULES_BYTES: u64 = 1 << 20;

/// Opens `path` for reading if it is a regular file of at most `limit`
/// bytes, under the policy for target files ([`crate::target_file`]);
/// `what` names it in errors ("rules file"), `instead` says what to do when
/// it is a FIFO or a device.
pub fn open_regular(
    path: &Path,
    what: &str,
    limit: u64,
    instead: &str,
) -> Result<File, UsageError> {
    let shown = path.display();
    target_file::open_limited(path, Links::Follow, limit).map_err(|refusal| match refusal.why {
        Why::NotRegular(kind) => UsageError(format!(
            "{what} {shown} is {kind}, not a regular file; {instead}"
        )),
        Why::TooLarge { .. } => too_large(path, what, limit),
        _ => UsageError(format!(
            "cannot read {what} {refusal}; check the path and its permissions"
        )),
    })
}

/// The whole text of a regular file of at most `limit` bytes. A file that
/// grows past the limit while it is read is refused too.
pub fn read_regular(path: &Path, what: &str, limit: u64) -> Result<String, UsageError> {
    let file = open_regular(path, what, limit, "pass a regular file")?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, what, &e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, what, limit));
    }
    String::from_utf8(bytes).map_err(|e| {
        UsageError(format!(
            "{what} {} is not UTF-8 text (byte {}); save it as UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn read_error(path: &Path, what: &str, error: &io::Error) -> UsageError {
    UsageError(format!(
        "cannot read {what} {}: {error}; check the file",
        path.display()
    ))
}

fn too_large(path: &Path, what: &str, limit: u64) -> UsageError {
    UsageError(format!(
        "{what} {} is larger than {} KiB; is it the right file?",
        path.display(),
        limit / 1024
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_only_and_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.toml");
        std::fs::write(&file, "x = 1\n").unwrap();
        assert_eq!(read_regular(&file, "rules file", 6).unwrap(), "x = 1\n");
        let message = read_regular(&file, "rules file", 5).unwrap_err().0;
        assert!(message.contains("larger than"), "{message}");
        let message = read_regular(Path::new("/dev/zero"), "rules file", 5)
            .unwrap_err()
            .0;
        assert!(message.contains("not a regular file"), "{message}");
        let message = read_regular(dir.path(), "rules file", 5).unwrap_err().0;
        assert!(message.contains("not a regular file"), "{message}");
        std::fs::write(&file, b"\xff\xfe").unwrap();
        let message = read_regular(&file, "rules file", 5).unwrap_err().0;
        assert!(message.contains("UTF-8"), "{message}");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let message = read_regular(&fifo, "rules file", 5).unwrap_err().0;
        assert!(message.contains("not a regular file"), "{message}");
    }
}
