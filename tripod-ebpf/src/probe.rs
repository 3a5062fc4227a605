//! The sideband probe: what the perf sideband's records say (executable
//! file mappings, execs, forks, exits), written by eBPF programs on the
//! kernel's own paths instead, for `cargo xtask bench --only sideband` to
//! measure against the perf events. Only that measurement loads them
//! (`--sideband-probe`); their maps are one page while unused.
//!
//! Each record is written in the system call that causes it, before the
//! process can run the code it maps: the same moment as the perf records.
//! Tracepoints only (see `tripod_common::probe` for why): the mmap system
//! call's two, and the scheduler's process events.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_task, bpf_ktime_get_ns},
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use tripod_common::probe::{
    FileOffsets, PendingMmap, ProbeKind, ProbeRecord, IDLE_RING_SIZE, MAX_PENDING, PROBE_NAME_LEN,
    PROT_EXEC,
};

/// Set by the loader before the programs are loaded; read-only afterwards.
#[no_mangle]
static PROBE_OFFSETS: FileOffsets = FileOffsets::EMPTY;

/// Resized by the loader when the probe is used.
#[map]
static PROBE_RECORDS: RingBuf = RingBuf::with_byte_size(IDLE_RING_SIZE, 0);

#[map]
static PROBE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static PROBE_PENDING: HashMap<u32, PendingMmap> = HashMap::with_max_entries(MAX_PENDING, 0);

// Offsets in the tracepoints' records (`events/syscalls/sys_*_mmap/format`).
const ENTER_LEN: usize = 24;
const ENTER_PROT: usize = 32;
const ENTER_FD: usize = 48;
const ENTER_OFF: usize = 56;
const EXIT_RET: usize = 16;

/// `mmap(addr, len, prot, flags, fd, off)` called: an executable mapping of
/// a file is kept until the call returns its address.
#[tracepoint]
pub fn probe_mmap_enter(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets of this tracepoint's record, within it.
    let field = |at: usize| unsafe { ctx.read_at::<u64>(at) }.unwrap_or(0);
    let fd = field(ENTER_FD) as i64;
    if field(ENTER_PROT) & PROT_EXEC == 0 || fd < 0 {
        return 0;
    }
    let pending = PendingMmap {
        fd: fd as u64,
        len: field(ENTER_LEN),
        offset: field(ENTER_OFF),
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    if PROBE_PENDING.insert(tid, pending, 0).is_err() {
        lose();
    }
    0
}

/// `mmap` returned: the mapping exists (or failed), and its file is the
/// descriptor's.
#[tracepoint]
pub fn probe_mmap(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { PROBE_PENDING.get(tid) }).copied() else {
        return 0;
    };
    let _ = PROBE_PENDING.remove(tid);
    // SAFETY: an offset of this tracepoint's record, within it.
    let start = unsafe { ctx.read_at::<i64>(EXIT_RET) }.unwrap_or(-1);
    // Errors are the last page of the address space (IS_ERR_VALUE).
    if (-4095..0).contains(&start) {
        return 0;
    }
    let mut record = begin(ProbeKind::Mmap);
    record.start = start as u64;
    record.len = pending.len;
    record.file_offset = pending.offset;
    let offsets = offsets();
    let task = current_task();
    let files: u64 = read(task, offsets.task_files).unwrap_or(0);
    let fdt: u64 = read(files, offsets.files_fdt).unwrap_or(0);
    let fds: u64 = read(fdt, offsets.fdtable_fd).unwrap_or(0);
    // A descriptor closed meanwhile by another thread reads as nothing.
    let file: u64 = read(fds, (pending.fd as u32).wrapping_mul(8)).unwrap_or(0);
    describe_file(&mut record, file);
    send(&record);
    0
}

#[inline(always)]
fn offsets() -> FileOffsets {
    // SAFETY: written once by the loader before loading; volatile so the
    // compiler does not fold in the zeroed default.
    unsafe { core::ptr::read_volatile(&PROBE_OFFSETS) }
}

#[inline(always)]
fn current_task() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_task() }
}

/// Fills in what the kernel knows of the mapped file: its inode, device
/// and generation, and its own name.
#[inline(always)]
fn describe_file(record: &mut ProbeRecord, file: u64) {
    let offsets = offsets();
    if file == 0 || offsets.file_inode == 0 {
        return;
    }
    let inode: u64 = read(file, offsets.file_inode).unwrap_or(0);
    if inode != 0 {
        record.ino = read(inode, offsets.inode_ino).unwrap_or(0);
        record.generation = read(inode, offsets.inode_generation).unwrap_or(0);
        let sb: u64 = read(inode, offsets.inode_sb).unwrap_or(0);
        if sb != 0 {
            record.dev = read(sb, offsets.sb_dev).unwrap_or(0);
        }
    }
    let dentry: u64 = read(file, offsets.file_dentry).unwrap_or(0);
    let name: u64 = match dentry {
        0 => 0,
        _ => read(dentry, offsets.dentry_name).unwrap_or(0),
    };
    if name != 0 {
        // SAFETY: a probe read of at most the buffer's size.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut record.name) };
    }
}

/// `sched_process_exec(p, old_pid, bprm)`: an exec succeeded. The kernel
/// mapped the program and its interpreter itself, without the mmap system
/// call: the record tells the program's file and text range.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn probe_exec(ctx: BtfTracePointContext) -> i32 {
    let bprm: u64 = ctx.arg(2);
    let offsets = offsets();
    let mut record = begin(ProbeKind::Exec);
    let mm: u64 = read(current_task(), offsets.task_mm).unwrap_or(0);
    let start: u64 = read(mm, offsets.mm_start_code).unwrap_or(0);
    let end: u64 = read(mm, offsets.mm_end_code).unwrap_or(0);
    record.start = start;
    record.len = end.saturating_sub(start);
    describe_file(&mut record, read(bprm, offsets.bprm_file).unwrap_or(0));
    send(&record);
    0
}

/// `sched_process_fork(parent, child)`: a new process or thread, whose
/// tgid is read from the child's `task_struct`.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn probe_fork(ctx: BtfTracePointContext) -> i32 {
    let child: u64 = ctx.arg(1);
    let mut record = begin(ProbeKind::Fork);
    let offsets = crate::config().task_offsets;
    record.child_pid = read(child, offsets.tgid).unwrap_or(0);
    send(&record);
    0
}

/// A thread exits (the process when its last thread does).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn probe_exit(_ctx: BtfTracePointContext) -> i32 {
    send(&begin(ProbeKind::Exit));
    0
}

/// A record of `kind` about the current thread, timed now.
#[inline(always)]
fn begin(kind: ProbeKind) -> ProbeRecord {
    let pid_tgid = bpf_get_current_pid_tgid();
    ProbeRecord {
        kind: kind as u32,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        child_pid: 0,
        // SAFETY: no preconditions.
        time_ns: unsafe { bpf_ktime_get_ns() },
        start: 0,
        len: 0,
        file_offset: 0,
        ino: 0,
        dev: 0,
        generation: 0,
        name: [0; PROBE_NAME_LEN],
    }
}

#[inline(always)]
fn send(record: &ProbeRecord) {
    if PROBE_RECORDS.output::<ProbeRecord>(record, 0).is_err() {
        lose();
    }
}

/// Counts a record that could not be written (ring or pending map full).
#[inline(always)]
fn lose() {
    if let Some(lost) = PROBE_LOST.get_ptr_mut(0) {
        // SAFETY: this CPU's own slot; tracepoint programs do not nest on one CPU.
        unsafe { *lost += 1 };
    }
}

/// Reads a `T` at `base + offset` of a kernel structure, offsets from BTF.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: a probe read; a bad address fails cleanly.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const c_void as *const T).ok() }
}
