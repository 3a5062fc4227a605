//! Wire types of the sideband probe: eBPF programs on the mmap, exec, fork
//! and exit paths that write what the perf sideband's records carry, so the
//! two ways of learning about mappings can be measured side by side
//! (`cargo xtask bench --only sideband`). The production path is the perf
//! sideband; nothing but that measurement loads these programs.
//!
//! Tracepoints only: `fexit` of `mmap_region` is refused (EPERM) by the
//! bench machine's kernel, which has no kprobes either. The mmap system call's
//! tracepoints see the mappings `ld.so` makes; the ones the kernel makes at
//! `exec` (the program and its interpreter) are told by the exec record, the
//! program's text only.

/// Names of the probe's programs and maps in the object file.
pub mod names {
    /// `sys_exit_mmap`: one [`super::ProbeRecord`] per executable file mapping.
    pub const MMAP_PROGRAM: &str = "probe_mmap";
    /// `sys_enter_mmap`: the arguments of an executable file mapping, kept
    /// until the call returns.
    pub const MMAP_ENTER_PROGRAM: &str = "probe_mmap_enter";
    /// `sched_process_exec`: the new program's comm, file and text.
    pub const EXEC_PROGRAM: &str = "probe_exec";
    /// `sched_process_fork`: a new process or thread.
    pub const FORK_PROGRAM: &str = "probe_fork";
    /// `sched_process_exit`: a thread exits.
    pub const EXIT_PROGRAM: &str = "probe_exit";
    /// Ring buffer of [`super::ProbeRecord`]s.
    pub const RECORDS: &str = "PROBE_RECORDS";
    /// Per-CPU count of records dropped because the ring was full.
    pub const LOST: &str = "PROBE_LOST";
    /// The global holding the [`super::FileOffsets`] set at load time.
    pub const OFFSETS: &str = "PROBE_OFFSETS";
    /// Mappings in flight: tid -> [`super::PendingMmap`].
    pub const PENDING: &str = "PROBE_PENDING";
}

/// Bytes of the probe's ring while nothing loads it (the smallest ring).
pub const IDLE_RING_SIZE: u32 = 4096;

/// `PROT_EXEC`: executable mappings only, as the perf sideband's `mmap2`
/// without `mmap_data`.
pub const PROT_EXEC: u64 = 0x4;

/// Threads in an mmap call at once that the probe follows.
pub const MAX_PENDING: u32 = 4096;

/// An executable file mapping asked for and not yet returned.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingMmap {
    pub fd: u64,
    pub len: u64,
    /// Bytes into the file.
    pub offset: u64,
}

/// What a [`ProbeRecord`] tells.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Mmap = 1,
    Exec = 2,
    Fork = 3,
    Exit = 4,
}

impl ProbeKind {
    pub fn from_u32(kind: u32) -> Option<ProbeKind> {
        match kind {
            1 => Some(ProbeKind::Mmap),
            2 => Some(ProbeKind::Exec),
            3 => Some(ProbeKind::Fork),
            4 => Some(ProbeKind::Exit),
            _ => None,
        }
    }
}

/// Bytes of a file's name (mmap) or a comm (exec) in a [`ProbeRecord`].
pub const PROBE_NAME_LEN: usize = 64;

/// One record of the probe's ring.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeRecord {
    /// A [`ProbeKind`].
    pub kind: u32,
    /// Process (tgid) the record is about; for a fork, the parent.
    pub pid: u32,
    /// Thread that made the mapping, exec'd or exited; for a fork, the parent thread.
    pub tid: u32,
    /// For a fork, the child's tgid (equal to `pid` for a new thread); else 0.
    pub child_pid: u32,
    /// `bpf_ktime_get_ns()`, the samples' clock.
    pub time_ns: u64,
    /// Mmap: start address, length and offset in the file (bytes); exec:
    /// the program's text (`start_code..end_code`, offset unknown: 0).
    pub start: u64,
    pub len: u64,
    pub file_offset: u64,
    /// Mmap and exec: the file's inode number, device (`s_dev`, kernel
    /// encoding) and inode generation; else 0.
    pub ino: u64,
    pub dev: u32,
    pub generation: u32,
    /// Mmap and exec: the file's own name (its dentry, not the path).
    /// NUL-terminated unless full.
    pub name: [u8; PROBE_NAME_LEN],
}

/// Where the fields the mmap probe reads are, found in the kernel's BTF by
/// the loader (Rust eBPF programs have no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FileOffsets {
    /// `struct file`: `f_inode`.
    pub file_inode: u32,
    /// `struct file`: `f_path.dentry`.
    pub file_dentry: u32,
    /// `struct inode`: `i_ino`, `i_sb`, `i_generation`.
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_generation: u32,
    /// `struct super_block`: `s_dev`.
    pub sb_dev: u32,
    /// `struct dentry`: `d_name.name`.
    pub dentry_name: u32,
    /// `struct task_struct`: `files`; `struct files_struct`: `fdt`;
    /// `struct fdtable`: `fd` (a descriptor's file).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    /// `struct task_struct`: `mm`; `struct mm_struct`: `start_code`,
    /// `end_code` (the program's text).
    pub task_mm: u32,
    pub mm_start_code: u32,
    pub mm_end_code: u32,
    /// `struct linux_binprm`: `file` (the program exec'd).
    pub bprm_file: u32,
}

impl FileOffsets {
    /// Nothing found yet: the probe writes no file fields.
    pub const EMPTY: FileOffsets = FileOffsets {
        file_inode: 0,
        file_dentry: 0,
        inode_ino: 0,
        inode_sb: 0,
        inode_generation: 0,
        sb_dev: 0,
        dentry_name: 0,
        task_files: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        task_mm: 0,
        mm_start_code: 0,
        mm_end_code: 0,
        bprm_file: 0,
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data without padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::ProbeRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingMmap {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_types_have_no_padding() {
        assert_eq!(
            core::mem::size_of::<ProbeRecord>(),
            4 * 4 + 5 * 8 + 2 * 4 + PROBE_NAME_LEN
        );
        assert_eq!(core::mem::size_of::<FileOffsets>(), 14 * 4);
        assert_eq!(core::mem::size_of::<PendingMmap>(), 3 * 8);
    }
}
