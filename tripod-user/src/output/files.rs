//! Output files, made safe for a root process writing where other users can
//! write too. A path named with `-o` is never followed through a symbolic
//! link, never truncated before the run has something to put there, and never
//! left half-written: reports go to a temporary file beside it (mode 0600,
//! like perf's perf.data) that is renamed over it at the end. Devices and
//! FIFOs (`-o /dev/null`) are written in place, as they cannot be replaced.
use std::{
    fs::{self, File, Metadata, OpenOptions},
    io::{self, BufWriter},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Result;
use tempfile::NamedTempFile;

use super::Sink;
use crate::{error::UsageError, usage_error};

/// Opens the file named with `-o`: checked, then staged beside it.
pub(super) fn open(path: &Path) -> Result<Sink> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    check_directories(path)?;
    let existing = match fs::symlink_metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(cannot_create(path, &e).into()),
    };
    if let Some(meta) = &existing {
        check_existing(path, dir, meta)?;
        if meta.file_type().is_char_device() || meta.file_type().is_fifo() {
            return Ok(Sink::Direct(BufWriter::new(open_in_place(path, meta)?)));
        }
    }
    // Part of the name, so the file says whose it is; short enough that a
    // name near NAME_MAX still leaves room for the rest.
    let name: String = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .chars()
        .take(64)
        .collect();
    // O_CREAT|O_EXCL, mode 0600: a new file, never one planted in advance.
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tripod-"))
        .rand_bytes(6)
        .tempfile_in(dir)
        .map_err(|e| cannot_create(path, &e))?;
    Ok(Sink::Staged {
        writer: BufWriter::new(temp),
        dest: path.to_path_buf(),
    })
}

/// Refuses what `fs.protected_symlinks` and `fs.protected_regular` would, on
/// every machine, whatever those sysctls say: a link, or a file owned by
/// someone else in a sticky world-writable directory such as /tmp.
fn check_existing(path: &Path, dir: &Path, meta: &Metadata) -> Result<()> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        usage_error!(
            "-o {}: is a symbolic link, and tripod-bpf does not write through links; \
             remove it, pass the path it points to, or -o - for stdout",
            path.display()
        );
    }
    if kind.is_dir() {
        usage_error!(
            "-o {}: is a directory; pass a file name in it",
            path.display()
        );
    }
    if !(kind.is_file() || kind.is_char_device() || kind.is_fifo()) {
        usage_error!(
            "-o {}: is neither a file, a character device nor a FIFO; choose another path",
            path.display()
        );
    }
    let Ok(dir_meta) = fs::metadata(dir) else {
        return Ok(());
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let shared = dir_meta.mode() & 0o1002 == 0o1002;
    if shared && meta.uid() != me && meta.uid() != dir_meta.uid() {
        usage_error!(
            "-o {}: belongs to uid {} in {}, a directory anyone can write to, so it may have \
             been planted; remove it or choose another path",
            path.display(),
            meta.uid(),
            dir.display()
        );
    }
    Ok(())
}

/// Refuses a path through a directory link planted in a shared directory
/// (`/tmp/evil/out.log` with `/tmp/evil -> /etc`), as `fs.protected_symlinks`
/// would: a link there is followed only if it is ours or the directory owner's.
fn check_directories(path: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for dir in path.ancestors().skip(1) {
        let (Some(parent), Ok(meta)) = (dir.parent(), fs::symlink_metadata(dir)) else {
            continue;
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let Ok(parent_meta) = fs::metadata(parent) else {
            continue;
        };
        let shared = parent_meta.mode() & 0o1002 == 0o1002;
        if meta.file_type().is_symlink()
            && shared
            && meta.uid() != me
            && meta.uid() != parent_meta.uid()
        {
            usage_error!(
                "-o {}: goes through {}, a link uid {} made in a directory anyone can write to; \
                 pass a path without it",
                path.display(),
                dir.display(),
                meta.uid()
            );
        }
    }
    Ok(())
}

/// A device or FIFO, opened for writing without following a link, without
/// creating anything and without waiting for a FIFO's reader.
fn open_in_place(path: &Path, checked: &Metadata) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => UsageError(format!(
                "-o {}: is a FIFO nobody reads yet; start its reader first",
                path.display()
            )),
            _ => cannot_create(path, &e),
        })?;
    // The same file as checked, not one swapped in since.
    let opened = file.metadata().map_err(|e| cannot_create(path, &e))?;
    if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
        usage_error!(
            "-o {}: changed while it was opened; check who else writes there",
            path.display()
        );
    }
    set_blocking(&file).map_err(|e| cannot_create(path, &e))?;
    Ok(file)
}

/// Clears O_NONBLOCK: writes to a slow reader wait rather than fail.
fn set_blocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The default log: a new `tripod_XXXXXX.log` in `$TMPDIR` (or /tmp).
pub(super) fn new_log(suffix: &str) -> Result<(File, PathBuf)> {
    let dir = std::env::temp_dir();
    let pattern = dir.join(format!("tripod_XXXXXX{suffix}"));
    // O_CREAT|O_EXCL with mode 0600: never an existing file, never through a symlink.
    let (file, path) = tempfile::Builder::new()
        .prefix("tripod_")
        .suffix(suffix)
        .rand_bytes(6)
        .tempfile_in(&dir)
        .map_err(|e| cannot_create(&pattern, &e))?
        .keep()
        .map_err(|e| cannot_create(&pattern, &e.error))?;
    Ok((file, path))
}

/// Flushes the temporary file and renames it over `dest`. rename(2) replaces
/// the name itself: a link planted there since the check is replaced, not
/// followed.
pub(super) fn persist(writer: BufWriter<NamedTempFile>, dest: &Path) -> Result<()> {
    let temp = writer
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {}", dest.display(), e.error()))?;
    temp.persist(dest).map_err(|e| {
        anyhow::anyhow!(
            "cannot put the output in place at {}: {}; what was written is lost",
            dest.display(),
            e.error
        )
    })?;
    Ok(())
}

fn cannot_create(path: &Path, error: &io::Error) -> UsageError {
    UsageError(format!(
        "cannot create output file {}: {error}; check that the directory exists and is writable, or pass -o PATH",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::unix::fs::PermissionsExt as _};

    use super::*;

    fn staged(path: &Path) -> (BufWriter<NamedTempFile>, PathBuf) {
        match open(path).unwrap() {
            Sink::Staged { writer, dest } => (writer, dest),
            _ => panic!("{path:?}: expected a staged file"),
        }
    }

    #[test]
    fn the_old_file_stays_until_the_new_one_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        fs::write(&path, "old\n").unwrap();
        let (mut writer, dest) = staged(&path);
        writer.write_all(b"new\n").unwrap();
        writer.flush().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\n");
        let temp = writer.get_ref().path().to_path_buf();
        assert_eq!(temp.parent(), Some(dir.path()));
        let mode = fs::metadata(&temp).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        persist(writer, &dest).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert!(!temp.exists());
        // Dropped unfinished: the temporary file goes, the file stays.
        let (mut writer, _) = staged(&path);
        writer.write_all(b"half").unwrap();
        drop(writer);
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A name as long as a file name can be still has room for its temporary file.
        let long = dir.path().join("x".repeat(255));
        let (writer, dest) = staged(&long);
        persist(writer, &dest).unwrap();
        assert!(long.is_file());
    }

    #[test]
    fn links_and_directories_are_refused_devices_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let refusal = |path: &Path| match open(path) {
            Err(e) => e.downcast::<UsageError>().unwrap().0,
            Ok(_) => panic!("{path:?} accepted"),
        };
        assert!(refusal(&link).contains("symbolic link"));
        assert!(refusal(dir.path()).contains("directory"));
        assert!(matches!(
            open(Path::new("/dev/null")).unwrap(),
            Sink::Direct(_)
        ));
    }
}
