//! Core files (`dump --core`): what a kernel core dump or gdb's `gcore`
//! says about a process, read without loading the file.
//!
//! The notes give the threads and their registers (`NT_PRSTATUS`: the
//! thread's id and an x86_64 `user_regs_struct`), the process's name
//! (`NT_PRPSINFO`), the mapped files with their address ranges and file
//! offsets (`NT_FILE`) and the auxiliary vector (`NT_AUXV`: where the vDSO
//! and the program's entry point are). The `PT_LOAD` segments hold the
//! memory that was dumped: the stacks are read from there, on demand, with
//! `pread` (a core can be larger than memory; only the headers, the notes
//! and each thread's stack are ever read). Read-only code is usually not in
//! the core: it is read from the files `NT_FILE` names, like a live process's.
//!
//! A core is the target's data, and so hostile: every size read from it is
//! bounded, and what it cuts short (a truncated file) is reported, not fatal.
//! [`source`] hands the threads to the pipeline as a dump's snapshot.
pub mod memory;
pub mod source;

use std::{fs::File, os::unix::fs::FileExt as _, path::Path};

use anyhow::{anyhow, Result};
use object::{
    elf,
    read::elf::{FileHeader as _, NoteIterator, ProgramHeader as _},
    Endianness, ReadCache,
};

/// At most this much of the notes is read (`NT_FILE` of a process with
/// 100,000 mappings is about 10 MiB).
const MAX_NOTES_BYTES: u64 = 64 << 20;

/// At most this much of each thread's stack is read, from its stack pointer
/// up (the default thread stack is 8 MiB, but the part in use, from the
/// stack pointer to the top, is rarely more than a few KiB).
pub const MAX_STACK_BYTES: u64 = 1 << 20;

/// How much of the start of a mapped file is compared with the file found
/// for it ([`Core::file_head`], [`same_head`]): one page.
const FILE_HEAD_BYTES: u64 = 4096;

/// `NT_FILE` ("CORE"): the mapped files. Not in `object::elf`.
const NT_FILE: u32 = 0x4649_4c45;

/// `AT_ENTRY` and `AT_SYSINFO_EHDR` of the auxiliary vector.
const AT_ENTRY: u64 = 9;
const AT_SYSINFO_EHDR: u64 = 33;

/// Where the registers start in `struct elf_prstatus` on x86_64, and the
/// indices of the ones we use in `struct user_regs_struct`.
const PRSTATUS_PID: usize = 32;
const PRSTATUS_REGS: usize = 112;
const REG_RBP: usize = 4;
const REG_ORIG_RAX: usize = 15;
const REG_RIP: usize = 16;
const REG_RSP: usize = 19;
const REG_FS_BASE: usize = 21;
const USER_REGS: usize = 27;

/// One thread of the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreThread {
    pub tid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Its TLS base, which glibc's `pthread_self()` returns: how CPython
    /// 3.6 and 3.7 name their threads.
    pub fs_base: u64,
    /// The system call the thread was in (`orig_rax`), if any.
    pub syscall: Option<i32>,
}

/// A file mapping `NT_FILE` lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    /// The offset in the file of the byte mapped at `start`.
    pub file_offset: u64,
    /// The path as the process saw it: raw bytes from the core.
    pub path: Vec<u8>,
    /// Whether a `PT_LOAD` segment of the range is executable.
    pub executable: bool,
}

/// A `PT_LOAD` segment: memory at `vaddr`, of which the first `filesz`
/// bytes were dumped at `offset` (the rest was not: the file's content, or
/// memory never touched), and the first `in_file` are there (less when the
/// core was cut short).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
    in_file: u64,
    executable: bool,
}

/// A core file, its notes parsed, its memory readable on demand.
#[derive(Debug)]
pub struct Core {
    file: File,
    segments: Vec<Segment>,
    /// The threads, in the order of their notes (the thread that dumped
    /// the core first, for a kernel core).
    pub threads: Vec<CoreThread>,
    /// The process id (`NT_PRPSINFO`, else the first thread's).
    pub pid: u32,
    /// The process name (`pr_fname`), raw bytes from the core.
    pub name: Option<Vec<u8>>,
    /// The mapped files, in the order of `NT_FILE`.
    pub files: Vec<MappedFile>,
    /// The vDSO's address (`AT_SYSINFO_EHDR`) and its segment's end.
    pub vdso: Option<(u64, u64)>,
    /// The program's entry point (`AT_ENTRY`): its mapping is the executable.
    pub entry: Option<u64>,
    /// What a truncated core lacks, one phrase each.
    pub missing: Vec<String>,
}

/// Why a file is not a core we can read: the whole message.
#[derive(Debug)]
pub struct NotACore(pub String);

impl Core {
    /// Parses the core `file` opened at `path`; `Err(NotACore)` for a file
    /// that is not an x86_64 ELF core, or that has no thread left to dump.
    pub fn open(path: &Path, file: File) -> Result<Core, NotACore> {
        let shown = crate::text::escape_controls_owned(path.display().to_string());
        let not = |why: &str| NotACore(format!("{shown} is not an ELF core file: {why}"));
        let len = file.metadata().map_err(|e| not(&e.to_string()))?.len();
        let segments;
        let mut notes = Vec::new();
        {
            let cache = ReadCache::new(&file);
            let header = elf::FileHeader64::<Endianness>::parse(&cache)
                .map_err(|_| not("no 64-bit ELF header"))?;
            let endian = header.endian().map_err(|_| not("bad byte order"))?;
            if header.e_type(endian) != elf::ET_CORE {
                return Err(not("an ELF file, but not a core (e_type is not ET_CORE)"));
            }
            if header.e_machine(endian) != elf::EM_X86_64 {
                return Err(NotACore(format!(
                    "{shown} is a core of another architecture than x86_64 (e_machine {})",
                    header.e_machine(endian)
                )));
            }
            let phdrs = header
                .program_headers(endian, &cache)
                .map_err(|_| not("its program headers are cut off"))?;
            segments = phdrs
                .iter()
                .filter(|p| p.p_type(endian) == elf::PT_LOAD)
                .map(|p| segment(endian, p, len))
                .collect::<Vec<_>>();
            for p in phdrs.iter().filter(|p| p.p_type(endian) == elf::PT_NOTE) {
                notes.push((p.p_offset(endian), p.p_filesz(endian), p.p_align(endian)));
            }
        }
        let mut core = Core {
            file,
            segments,
            threads: Vec::new(),
            pid: 0,
            name: None,
            files: Vec::new(),
            vdso: None,
            entry: None,
            missing: Vec::new(),
        };
        for (offset, size, align) in notes {
            core.read_notes(offset, size, align, len);
        }
        core.finish(len);
        if core.threads.is_empty() {
            return Err(NotACore(format!(
                "{shown} has no thread (no NT_PRSTATUS note){}",
                core.missing_text()
            )));
        }
        Ok(core)
    }

    /// `: ` and what is missing, when anything is.
    fn missing_text(&self) -> String {
        if self.missing.is_empty() {
            String::new()
        } else {
            format!(": {}", self.missing.join("; "))
        }
    }

    /// Reads and parses one `PT_NOTE` segment, as much of it as the file holds.
    fn read_notes(&mut self, offset: u64, size: u64, align: u64, len: u64) {
        let available = len.saturating_sub(offset).min(size);
        if available < size {
            self.missing.push(format!(
                "notes cut off: {available} of {size} bytes in the file"
            ));
        }
        let wanted = available.min(MAX_NOTES_BYTES);
        if wanted < available {
            self.missing
                .push(format!("notes past {MAX_NOTES_BYTES} bytes not read"));
        }
        let mut data = vec![0; wanted as usize];
        if let Err(e) = self.file.read_exact_at(&mut data, offset) {
            self.missing.push(format!("notes unreadable: {e}"));
            return;
        }
        let endian = Endianness::Little;
        let Ok(mut notes) =
            NoteIterator::<elf::FileHeader64<Endianness>>::new(endian, align, &data)
        else {
            self.missing.push("notes with an invalid alignment".into());
            return;
        };
        loop {
            match notes.next() {
                Ok(Some(note)) if note.name() == b"CORE" => {
                    self.note(note.n_type(endian), note.desc());
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    self.missing.push("a note cut off".into());
                    break;
                }
            }
        }
    }

    /// One note of the core.
    fn note(&mut self, kind: u32, desc: &[u8]) {
        match kind {
            elf::NT_PRSTATUS => match prstatus(desc) {
                Some(thread) => self.threads.push(thread),
                None => self
                    .missing
                    .push("a thread's registers (NT_PRSTATUS too short)".into()),
            },
            elf::NT_PRPSINFO if desc.len() >= 56 => {
                self.pid = u32_at(desc, 24).unwrap_or(0);
                let name = &desc[40..56];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                self.name = Some(name[..end].to_vec());
            }
            NT_FILE => match mapped_files(desc) {
                Some(files) => self.files = files,
                None => self
                    .missing
                    .push("the mapped files (NT_FILE malformed)".into()),
            },
            elf::NT_AUXV => {
                for pair in desc.chunks_exact(16) {
                    let (key, value) = (u64_at(pair, 0), u64_at(pair, 8));
                    match key {
                        Some(AT_ENTRY) => self.entry = value,
                        Some(AT_SYSINFO_EHDR) => self.vdso = value.map(|v| (v, v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// What only all the notes together tell: which mappings are code, the
    /// vDSO's extent, the pid, and which segments the file lacks.
    fn finish(&mut self, len: u64) {
        if self.pid == 0 {
            self.pid = self.threads.first().map_or(0, |t| t.tid);
        }
        for file in &mut self.files {
            // The kernel writes a segment for every mapping, with its
            // permissions; gdb leaves read-only file mappings out, code
            // among them. A mapping in no segment may be code.
            let overlapping = |s: &&Segment| s.vaddr < file.end && file.start < s.vaddr + s.memsz;
            let mut segments = self.segments.iter().filter(overlapping).peekable();
            file.executable = segments.peek().is_none() || segments.any(|s| s.executable);
        }
        if let Some((start, _)) = self.vdso {
            let segment = self.segments.iter().find(|s| s.vaddr == start);
            self.vdso = segment.map(|s| (start, start + s.memsz));
        }
        let cut: Vec<&Segment> = self
            .segments
            .iter()
            .filter(|s| s.in_file < s.filesz)
            .collect();
        if !cut.is_empty() {
            let lost: u64 = cut.iter().map(|s| s.filesz - s.in_file).sum();
            self.missing.push(format!(
                "{} of {} memory segments cut off ({} not in the file of {} bytes)",
                cut.len(),
                self.segments.len(),
                crate::model::human_size(lost),
                len
            ));
        }
    }

    /// The memory at `address`, at most `max` bytes of it, as far as the
    /// core holds it without a gap; empty when it holds none.
    pub fn read_memory(&self, address: u64, max: u64) -> Vec<u8> {
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| s.vaddr <= address && address < s.vaddr.saturating_add(s.in_file))
        else {
            return Vec::new();
        };
        let skip = address - segment.vaddr;
        let wanted = (segment.in_file - skip).min(max);
        let mut bytes = vec![0; wanted as usize];
        match self.file.read_at(&mut bytes, segment.offset + skip) {
            Ok(read) => bytes.truncate(read),
            Err(_) => bytes.clear(),
        }
        bytes
    }

    /// The start of the file mapped at `path` (its first page: the ELF
    /// header, program headers and build-id note) as the core holds it:
    /// the kernel dumps it for every ELF mapping by default (bit 4 of
    /// `coredump_filter`), gdb for those it dumps at all. Empty when the
    /// core holds none.
    pub fn file_head(&self, path: &[u8]) -> Vec<u8> {
        let Some(first) = self
            .files
            .iter()
            .find(|f| f.path == path && f.file_offset == 0)
        else {
            return Vec::new();
        };
        self.read_memory(first.start, FILE_HEAD_BYTES.min(first.end - first.start))
    }

    /// The path of the executable: the file whose mapping holds the entry
    /// point, else the first one mapped.
    pub fn executable_path(&self) -> Option<&[u8]> {
        let entry = self.entry.unwrap_or(0);
        self.files
            .iter()
            .find(|f| f.start <= entry && entry < f.end)
            .or(self.files.first())
            .map(|f| f.path.as_slice())
    }
}

/// A `PT_LOAD` program header, with how much of it the file of `len` bytes holds.
fn segment(endian: Endianness, p: &elf::ProgramHeader64<Endianness>, len: u64) -> Segment {
    let (offset, filesz) = (p.p_offset(endian), p.p_filesz(endian));
    Segment {
        vaddr: p.p_vaddr(endian),
        memsz: p.p_memsz(endian),
        offset,
        filesz,
        in_file: filesz.min(len.saturating_sub(offset)),
        executable: p.p_flags(endian) & elf::PF_X != 0,
    }
}

/// A thread from its `NT_PRSTATUS`; `None` if the note is too short.
fn prstatus(desc: &[u8]) -> Option<CoreThread> {
    let reg = |index: usize| u64_at(desc, PRSTATUS_REGS + index * 8);
    reg(USER_REGS - 1)?;
    // -1 (all bits) when the thread was not in a system call.
    let orig_rax = reg(REG_ORIG_RAX)? as i64;
    Some(CoreThread {
        tid: u32_at(desc, PRSTATUS_PID)?,
        ip: reg(REG_RIP)?,
        sp: reg(REG_RSP)?,
        bp: reg(REG_RBP)?,
        fs_base: reg(REG_FS_BASE)?,
        syscall: i32::try_from(orig_rax).ok().filter(|n| *n >= 0),
    })
}

/// The mapped files of an `NT_FILE` note: a count and a page size, then
/// (start, end, offset in pages) per file, then their paths, each ended by
/// a NUL. `None` when the counts do not fit the note.
fn mapped_files(desc: &[u8]) -> Option<Vec<MappedFile>> {
    let count = usize::try_from(u64_at(desc, 0)?).ok()?;
    let page_size = u64_at(desc, 8)?;
    let ranges_end = count.checked_mul(24)?.checked_add(16)?;
    let mut paths = desc.get(ranges_end..)?.split(|&b| b == 0);
    let mut files = Vec::with_capacity(count.min(desc.len() / 24));
    for index in 0..count {
        let at = 16 + index * 24;
        files.push(MappedFile {
            start: u64_at(desc, at)?,
            end: u64_at(desc, at + 8)?,
            file_offset: u64_at(desc, at + 16)?.checked_mul(page_size)?,
            path: paths.next()?.to_vec(),
            executable: false,
        });
    }
    Some(files)
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Whether `file` starts with `head`, the start of the file a core maps
/// ([`Core::file_head`]). Those bytes hold its ELF header, program headers
/// and build-id note, which any rebuild changes: a file that differs there
/// is not the one the process mapped, and its symbols would name its frames
/// wrongly. (One that does not differ may still, in theory, differ further
/// on; with a build id it does not.) An unreadable file differs.
pub fn same_head(file: &File, head: &[u8]) -> bool {
    let mut bytes = vec![0; head.len()];
    file.read_exact_at(&mut bytes, 0).is_ok() && bytes == head
}

/// The core's file, under the policy for target files but for its size (a
/// core is read on demand, never whole): a FIFO or device would block.
/// Refused or missing, it is a usage error.
pub fn open_file(path: &Path) -> Result<File> {
    let links = crate::target_file::Links::Follow;
    crate::target_file::open_limited(path, links, u64::MAX).map_err(|refusal| {
        let shown = crate::text::escape_controls_owned(refusal.to_string());
        anyhow!(crate::error::UsageError(format!(
            "cannot read the core: {shown}"
        )))
    })
}

#[cfg(test)]
mod tests;
