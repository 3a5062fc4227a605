//! Opening files on behalf of a target: its binaries, libraries and debug files.
//!
//! Whoever owns a sampled process controls the files it maps and every file
//! they link to (`.gnu_debuglink` and friends), and tripod-bpf reads them as
//! root. One policy covers them all, so that none can hang or exhaust the
//! sampler:
//! - opened with `O_NONBLOCK` (a FIFO cannot block the `open`) and, where the
//!   caller expects no link, `O_NOFOLLOW`;
//! - checked with `fstat` on the opened descriptor: only regular files, no
//!   larger than [`max_file_size`];
//! - read through that same descriptor (`/proc/self/fd/N` for code that wants
//!   a path), so a file swapped after the check is never the one read.
//!
//! A file that is refused is data, not an error: a [`Refusal`] names the path
//! and why, and frames of that file say so instead of being dropped.
use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

/// The model's type, under the name this module's callers know it by:
/// frames of a refused file carry it (see [`crate::model::Unknown::NotRead`]).
pub use crate::model::FileRefused as Why;

/// Default for [`max_file_size`]: larger than any shipped library or debug
/// file we know of (libLLVM's debug file is about 700 MiB), small enough that
/// a planted sparse file cannot make a recording read for minutes.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 30;

static MAX_FILE_SIZE: AtomicU64 = AtomicU64::new(DEFAULT_MAX_FILE_SIZE);

/// The largest target file read, in bytes (`--max-file-size`).
pub fn max_file_size() -> u64 {
    MAX_FILE_SIZE.load(Ordering::Relaxed)
}

/// Sets [`max_file_size`] for the whole run; called once, before any file is read.
pub fn set_max_file_size(bytes: u64) {
    MAX_FILE_SIZE.store(bytes, Ordering::Relaxed);
}

/// Raises the soft limit on open descriptors to the hard one: every mapped
/// file of every sampled process is kept open (so it can be read after the
/// process exits), and a busy machine maps more than the usual 1024.
pub fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::debug!(
                    "could not raise RLIMIT_NOFILE: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// Why a target's file was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub path: PathBuf,
    pub why: Why,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.why.describe(self.path.display(), f)
    }
}

/// Whether [`open`] follows a symbolic link in the last component of the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Links {
    Follow,
    Refuse,
}

/// Opens `path` under the policy: never blocks, and only a regular file of at
/// most [`max_file_size`] bytes is returned.
pub fn open(path: &Path, links: Links) -> Result<File, Refusal> {
    open_limited(path, links, max_file_size())
}

/// [`open`] with a limit of its own, for files the user names (`--rules`,
/// `report FILE`): the same policy, another size.
pub fn open_limited(path: &Path, links: Links, max: u64) -> Result<File, Refusal> {
    let refusal = |why| Refusal {
        path: path.to_path_buf(),
        why,
    };
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) if links == Links::Refuse => refusal(Why::Symlink),
            _ => refusal(Why::Unreadable(e.to_string())),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| refusal(Why::Unreadable(e.to_string())))?;
    acceptable(&meta, max).map_err(refusal)?;
    Ok(file)
}

/// Opens `path` as the target whose root directory is `root` (its
/// `/proc/PID/root`) sees it: every component, `..` and symbolic links
/// included, is resolved inside that root (`openat2` with
/// `RESOLVE_IN_ROOT`), so a link the target planted cannot lead to one of
/// the host's files; with [`Links::Refuse`], a link in the last component
/// is refused. Then the same checks as [`open`], with `max` bytes.
pub fn open_in_root(root: &Path, path: &Path, links: Links, max: u64) -> Result<File, Refusal> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    let refusal = |why| Refusal {
        path: path.to_path_buf(),
        why,
    };
    let unreadable = |e: io::Error| refusal(Why::Unreadable(e.to_string()));
    let directory = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
        .open(root)
        .map_err(unreadable)?;
    let name = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| refusal(Why::Unreadable("a NUL byte in the path".into())))?;
    // SAFETY: zeroed is a valid `open_how` (every field a plain integer).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    let mut flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid directory descriptor, a NUL-terminated path and an
    // `open_how` of the size passed; the result is a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            directory.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let error = io::Error::last_os_error();
        if links == Links::Refuse && error.raw_os_error() == Some(libc::ELOOP) {
            return Err(refusal(Why::Symlink));
        }
        return Err(unreadable(error));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd as i32) };
    let meta = file.metadata().map_err(unreadable)?;
    acceptable(&meta, max).map_err(refusal)?;
    Ok(file)
}

/// Checks the file `path` names now (following links), without opening it:
/// for files another library will open by path, so that it is never handed a
/// FIFO or a giant. A missing file is `Ok(None)`.
pub fn check(path: &Path) -> Result<Option<fs::Metadata>, Refusal> {
    match fs::metadata(path) {
        Ok(meta) => acceptable(&meta, max_file_size())
            .map(|()| Some(meta))
            .map_err(|why| Refusal {
                path: path.to_path_buf(),
                why,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(Refusal {
            path: path.to_path_buf(),
            why: Why::Unreadable(e.to_string()),
        }),
    }
}

/// The path through which `file` itself (not whatever its name now names) is
/// opened again: for libraries that take paths.
pub fn fd_path(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd as _;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn acceptable(meta: &fs::Metadata, max: u64) -> Result<(), Why> {
    let kind = meta.file_type();
    let not_regular = if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_dir() {
        Some("a directory")
    } else if !kind.is_file() {
        Some("not a file")
    } else {
        None
    };
    if let Some(kind) = not_regular {
        return Err(Why::NotRegular(kind));
    }
    // Sparse files count at their apparent size: that is what a reader maps.
    if meta.size() > max {
        return Err(Why::TooLarge {
            size: meta.size(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod open_in_root_tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_root_and_files_are_checked() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        fs::write(dir.join("app.py"), "print(1)\n").unwrap();
        fs::write(dir.join("shadow"), "inside\n").unwrap();
        // An absolute link: resolved in the root, it names <root>/shadow, not /etc/...
        std::os::unix::fs::symlink("/shadow", dir.join("link.py")).unwrap();
        std::os::unix::fs::symlink("/../../../shadow", dir.join("up.py")).unwrap();
        let read = |path: &str| {
            let mut text = String::new();
            io::Read::read_to_string(
                &mut open_in_root(dir, Path::new(path), Links::Follow, 1024)?,
                &mut text,
            )
            .unwrap();
            Ok::<_, Refusal>(text)
        };
        assert_eq!(read("/app.py").unwrap(), "print(1)\n");
        assert_eq!(read("/link.py").unwrap(), "inside\n");
        assert_eq!(read("/up.py").unwrap(), "inside\n");
        assert!(matches!(
            read("/missing.py"),
            Err(Refusal {
                why: Why::Unreadable(_),
                ..
            })
        ));
        std::fs::create_dir(dir.join("d")).unwrap();
        assert!(matches!(
            read("/d"),
            Err(Refusal {
                why: Why::NotRegular(_),
                ..
            })
        ));
        fs::write(dir.join("big.py"), vec![b'#'; 2048]).unwrap();
        assert!(matches!(
            read("/big.py"),
            Err(Refusal {
                why: Why::TooLarge { .. },
                ..
            })
        ));
    }

    /// With `Links::Refuse` a link in the last component is refused; the
    /// directories before it still resolve inside the root.
    #[test]
    fn a_link_at_the_end_can_be_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        fs::create_dir(dir.join("tmp")).unwrap();
        fs::write(dir.join("tmp/real.map"), "1 1 f\n").unwrap();
        std::os::unix::fs::symlink("/tmp/real.map", dir.join("tmp/link.map")).unwrap();
        std::os::unix::fs::symlink("/tmp", dir.join("t")).unwrap();
        let open = |path: &str| open_in_root(dir, Path::new(path), Links::Refuse, 1024);
        assert!(open("/tmp/real.map").is_ok());
        assert!(open("/t/real.map").is_ok());
        assert!(matches!(
            open("/tmp/link.map"),
            Err(Refusal {
                why: Why::Symlink,
                ..
            })
        ));
    }
}

/// Parses `--max-file-size`: bytes, or a number with K, M, G or T (powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let shift = match unit
        .trim()
        .trim_end_matches(['B', 'b'])
        .trim_end_matches('i')
    {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::human_size;
    use std::os::unix::fs::symlink;

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let refusal = open(&fifo, Links::Follow).unwrap_err();
        assert_eq!(refusal.why, Why::NotRegular("a FIFO"));
        assert_eq!(
            check(&fifo).unwrap_err().to_string(),
            format!("{} is a FIFO, not a regular file", fifo.display())
        );
        // A link to it is refused as a link, or followed to the FIFO.
        let link = dir.path().join("link");
        symlink(&fifo, &link).unwrap();
        assert_eq!(open(&link, Links::Refuse).unwrap_err().why, Why::Symlink);
        assert_eq!(
            open(&link, Links::Follow).unwrap_err().why,
            Why::NotRegular("a FIFO")
        );
    }

    #[test]
    fn devices_and_directories_are_refused() {
        assert_eq!(
            open(Path::new("/dev/zero"), Links::Follow).unwrap_err().why,
            Why::NotRegular("a character device")
        );
        assert_eq!(
            check(Path::new("/tmp")).unwrap_err().why,
            Why::NotRegular("a directory")
        );
        assert!(check(Path::new("/nonexistent/x")).unwrap().is_none());
    }

    #[test]
    fn sparse_giants_are_refused_by_their_size() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(DEFAULT_MAX_FILE_SIZE + 1).unwrap();
        let refusal = open(file.path(), Links::Refuse).unwrap_err();
        assert!(matches!(refusal.why, Why::TooLarge { .. }));
        assert!(refusal
            .to_string()
            .contains("more than --max-file-size 1 GiB"));
    }

    #[test]
    fn limits_of_their_own() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"0123456789").unwrap();
        assert!(open_limited(file.path(), Links::Follow, 10).is_ok());
        assert!(matches!(
            open_limited(file.path(), Links::Follow, 9).unwrap_err().why,
            Why::TooLarge { size: 10, max: 9 }
        ));
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(20 * (1 << 30) + (1 << 29)), "20.5 GiB");
        assert_eq!(human_size(100), "100 B");
    }
}
