//! Files of mappings the sideband recorded: opened when the record arrives,
//! often after the process is gone, and accepted only if they are the file
//! the kernel saw mapped (its build id, else its device and inode). A
//! binary replaced on disk since is refused, so the old one's addresses are
//! never named from the new one.
//!
//! Everything here is the target's: the path is bytes it chose, the file is
//! read under the policy of [`crate::target_file`].
use std::{
    ffi::OsStr,
    fs::File,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::target_file::{self, Links, Refusal, Why};

/// Which file the kernel saw mapped, to check an opened file against (the
/// sideband's identity, without its inode generation, which `stat` lacks).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileCheck {
    BuildId(Box<[u8]>),
    Inode { major: u32, minor: u32, inode: u64 },
}

/// A mapping as an MMAP2 record describes it.
#[derive(Clone, Debug)]
pub struct RecordedMapping<'a> {
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    /// The path the kernel printed: bytes the target chose.
    pub path: &'a [u8],
    pub identity: Option<FileCheck>,
}

impl RecordedMapping<'_> {
    /// The name of a mapping without a file (`[vdso]`, `//anon` JIT code),
    /// `None` for one with a file.
    pub fn special(&self) -> Option<String> {
        let no_file = self.path.starts_with(b"[")
            || self.path.starts_with(b"//anon")
            || !self.path.starts_with(b"/");
        no_file.then(|| match self.path {
            b"//anon" | b"" => "[anon]".to_string(),
            path => String::from_utf8_lossy(path).into_owned(),
        })
    }

    /// The path for display: the kernel's, without its ` (deleted)` mark.
    pub fn display_path(&self) -> String {
        let path = self.path.strip_suffix(b" (deleted)").unwrap_or(self.path);
        String::from_utf8_lossy(path).into_owned()
    }
}

/// Opens the file of `mapping` if it is the one the kernel saw mapped:
/// through the mapping itself while the process lives
/// (`/proc/PID/map_files/`), else its path inside the process's root, else
/// the path in ours. A file too large or not regular is that by any path.
pub fn open(mapping: &RecordedMapping<'_>) -> Result<File, Refusal> {
    let path = mapping
        .path
        .strip_suffix(b" (deleted)")
        .unwrap_or(mapping.path);
    let path = Path::new(OsStr::from_bytes(path));
    let (pid, start, end) = (mapping.pid, mapping.start, mapping.end);
    let attempts: [&dyn Fn() -> Result<File, Refusal>; 3] = [
        // A link by design: it opens the mapped file whatever its name now.
        &|| target_file::open(&map_files(pid, start, end), Links::Follow),
        &|| {
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            target_file::open_in_root(&root, path, Links::Follow, target_file::max_file_size())
        },
        // The printed path is canonical: a link in its last component is a swap.
        &|| target_file::open(path, Links::Refuse),
    ];
    let mut refusal = None;
    for attempt in attempts {
        match attempt().and_then(|file| checked(file, path, mapping.identity.as_ref())) {
            Ok(file) => return Ok(file),
            Err(r) if matches!(r.why, Why::TooLarge { .. } | Why::NotRegular(_)) => return Err(r),
            // The most telling refusal: a file changed says more than a
            // process gone.
            Err(r) if r.why == Why::Replaced => refusal = Some(r),
            Err(r) => refusal = refusal.or(Some(r)),
        }
    }
    Err(refusal.unwrap_or(Refusal {
        path: path.to_path_buf(),
        why: Why::Unreadable("no path opens it".into()),
    }))
}

fn map_files(pid: u32, start: u64, end: u64) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
}

/// `file` if it is the file `identity` names.
fn checked(file: File, path: &Path, identity: Option<&FileCheck>) -> Result<File, Refusal> {
    let same = match identity {
        // Nothing to check against: a seed, whose file was opened by inode.
        None => true,
        Some(FileCheck::Inode {
            major,
            minor,
            inode,
        }) => file.metadata().is_ok_and(|meta| {
            let dev = meta.dev();
            meta.ino() == *inode && libc::major(dev) == *major && libc::minor(dev) == *minor
        }),
        Some(FileCheck::BuildId(id)) => build_id(&file).as_deref() == Some(&id[..]),
    };
    match same {
        true => Ok(file),
        false => Err(Refusal {
            path: path.to_path_buf(),
            why: Why::Replaced,
        }),
    }
}

/// The build id note of an ELF file; reads its headers and notes only.
fn build_id(file: &File) -> Option<Vec<u8>> {
    use object::{read::elf::ElfFile64, Object as _};
    let cache = object::read::ReadCache::new(file);
    let elf = ElfFile64::<object::Endianness, _>::parse(&cache).ok()?;
    elf.build_id().ok().flatten().map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(path: &[u8], identity: Option<FileCheck>) -> RecordedMapping<'_> {
        RecordedMapping {
            // Not a live pid: only the path in our root can open it.
            pid: u32::MAX,
            start: 0x1000,
            end: 0x2000,
            path,
            identity,
        }
    }

    #[test]
    fn the_file_is_accepted_only_with_its_identity() {
        let exe = std::env::current_exe().unwrap();
        let path = exe.as_os_str().as_bytes();
        let meta = std::fs::metadata(&exe).unwrap();
        let inode = FileCheck::Inode {
            major: libc::major(meta.dev()),
            minor: libc::minor(meta.dev()),
            inode: meta.ino(),
        };
        assert!(open(&ours(path, Some(inode))).is_ok());
        let other = FileCheck::Inode {
            major: 0,
            minor: 0,
            inode: 1,
        };
        let refused = open(&ours(path, Some(other))).unwrap_err();
        assert_eq!(refused.why, Why::Replaced);
        if let Some(id) = build_id(&File::open(&exe).unwrap()) {
            let id = FileCheck::BuildId(id.into());
            assert!(open(&ours(path, Some(id))).is_ok());
        }
        let wrong = FileCheck::BuildId([1; 20].into());
        assert_eq!(
            open(&ours(path, Some(wrong))).unwrap_err().why,
            Why::Replaced
        );
    }

    #[test]
    fn mappings_without_files_are_named() {
        assert_eq!(ours(b"[vdso]", None).special().as_deref(), Some("[vdso]"));
        assert_eq!(ours(b"//anon", None).special().as_deref(), Some("[anon]"));
        assert_eq!(ours(b"/usr/bin/x (deleted)", None).special(), None);
        assert_eq!(
            ours(b"/usr/bin/x (deleted)", None).display_path(),
            "/usr/bin/x"
        );
    }
}
