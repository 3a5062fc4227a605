//! Types and constants shared by the tripod eBPF program and its loader.
//!
//! Everything here crosses the kernel/user boundary through BPF maps or
//! global variables, so every type is `#[repr(C)]` plain data with no
//! implicit padding: the kernel writes the bytes and userspace reads them
//! back, and both sides must agree on every offset.
#![no_std]

pub mod probe;
pub mod syscall_stack;

/// Names of the maps and programs in the eBPF object, so both sides spell them the same.
pub mod names {
    /// The `perf_event` program attached to every CPU.
    pub const SAMPLE_PROGRAM: &str = "sample_stack";
    /// Target process ids (tgids), used when not sampling the whole system.
    pub const TARGETS: &str = "TARGETS";
    /// Sample counts of generation 0 and 1 (see [`crate::Control`]).
    pub const COUNTS: [&str; 2] = ["COUNTS_0", "COUNTS_1"];
    /// Stack traces referenced by the counts of generation 0 and 1.
    pub const STACKS: [&str; 2] = ["STACKS_0", "STACKS_1"];
    /// Per-CPU failure and sample counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Runtime control written by userspace, see [`crate::Control`].
    pub const CONTROL: &str = "CONTROL";
    /// The global holding the [`crate::SamplerConfig`] set at load time.
    pub const CONFIG: &str = "CONFIG";
    /// Ring buffer of [`crate::StackCopy`] records (`--unwind dwarf`).
    pub const STACK_COPIES: &str = "STACK_COPIES";
    /// Scratch space where a [`crate::StackCopy`] is assembled, see [`crate::ScratchSlot`].
    pub const SCRATCH: &str = "SCRATCH";
    /// The `sched_switch` program of `--mode off-cpu` and `--mode wall`.
    pub const SWITCH_PROGRAM: &str = "track_switch";
    /// When each switched-out target thread stopped running: tid -> `bpf_ktime_get_ns`.
    pub const BLOCKED_SINCE: &str = "BLOCKED_SINCE";
    /// The task iterator behind `tripod-bpf dump`.
    pub const DUMP_PROGRAM: &str = "dump_threads";
    /// The cgroups `--cgroup` selects, by cgroup id (see [`crate::SamplerConfig::cgroup_filter`]).
    pub const CGROUPS: &str = "CGROUPS";
    /// Python processes whose frames are collected: tgid -> [`crate::PythonProcess`].
    pub const PYTHON_PROCESSES: &str = "PYTHON_PROCESSES";
    /// Where each thread's `PyThreadState` is: tid -> [`crate::PythonThread`].
    pub const PYTHON_THREADS: &str = "PYTHON_THREADS";
    /// Compiled unwind rows of every file, one range per file (`--unwind tables`).
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    /// Each process's executable mappings and their rows: tgid -> [`crate::UnwindProcess`].
    pub const UNWIND_PROCESSES: &str = "UNWIND_PROCESSES";
    /// User stacks walked with the rows, of generation 0 and 1: id -> [`crate::WalkedStack`].
    pub const WALKED: [&str; 2] = ["WALKED_0", "WALKED_1"];
}

/// The errno values the kernel side reports, by name.
///
/// `bpf_get_stackid` and `bpf_get_stack` fail with a negative errno, which
/// the eBPF programs store as is (a [`SampleKey`] stack id, a
/// [`StackCopyHeader::kernel_error`]) or count by kind
/// ([`Counter::for_stack_error`]); userspace names them back
/// (`tripod-user`'s `model::Unknown`) and meets `EEXIST` again when it adds
/// a key that the kernel added first. Values from
/// `include/uapi/asm-generic/errno-base.h`, the same on every architecture;
/// `no_std` has no libc to take them from.
pub mod errno {
    /// Out of memory: for `bpf_get_stackid`, the stack map is full.
    pub const ENOMEM: i32 = 12;
    /// Bad address: for `bpf_get_stackid`, no stack could be read (normal
    /// for the user stack of kernel threads).
    pub const EFAULT: i32 = 14;
    /// Exists: for `bpf_get_stackid`, a different stack already holds the
    /// same hash bucket; for a map update with `BPF_NOEXIST`, the key is there.
    pub const EEXIST: i32 = 17;
}

/// Length of a task's `comm`, including the terminating NUL.
pub const COMM_LEN: usize = 16;

/// Deepest stack `bpf_get_stackid` records (`PERF_MAX_STACK_DEPTH`). A stack of
/// exactly this depth was probably cut short.
pub const MAX_STACK_DEPTH: usize = 127;

/// Default number of entries of each stack-trace map (`--stack-storage-size`).
pub const DEFAULT_STACK_STORAGE_SIZE: u32 = 16384;

/// Default number of entries of each count map (`--count-map-size`).
pub const DEFAULT_COUNT_MAP_SIZE: u32 = 65536;

/// Most processes that can be named with `--pid`.
pub const MAX_TARGETS: u32 = 4096;

/// Most cgroups that can be named with `--cgroup`.
pub const MAX_CGROUPS: u32 = 64;

/// Deepest cgroup level the eBPF programs look at when `--cgroup` filters:
/// a thread whose cgroup is nested deeper is still matched against its
/// ancestors up to this level (levels count from the root, 0). Real
/// hierarchies (Kubernetes pods, nested systemd slices) stay under 10.
pub const MAX_CGROUP_LEVEL: u32 = 32;

/// The stack id stored in a [`SampleKey`] when that stack was not asked for
/// (`--user-only` or `--kernel-only`). Real failures store the negative errno
/// that `bpf_get_stackid` returned, which is always small.
pub const STACK_NOT_COLLECTED: i32 = i32::MIN;

/// Most bytes of user stack one sample can carry (`--stack-copy-bytes` is capped here).
pub const MAX_STACK_COPY: usize = 32 * 1024;

/// Default bytes of user stack copied per sample.
pub const DEFAULT_STACK_COPY: u32 = 16 * 1024;

/// Default size of the ring buffer that carries stack copies, in bytes.
pub const DEFAULT_RING_BUFFER_SIZE: u32 = 8 * 1024 * 1024;

/// The ring buffer wakes its reader once it holds this fraction of its size
/// (see [`ring_wakeup_flags`]).
pub const RING_WAKEUP_FRACTION: u64 = 4;

/// `BPF_RB_NO_WAKEUP` from the kernel's uapi: wake no one for this record.
pub const BPF_RB_NO_WAKEUP: u64 = 1;

/// `BPF_RB_FORCE_WAKEUP` from the kernel's uapi: wake the reader now.
pub const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// The flags a record of `len` bytes is sent to the ring buffer with, when
/// `avail` bytes wait in a ring of `ring_size` bytes and the reader says
/// whether it reads on a timer of its own ([`CONTROL_READER_TICKING`]).
///
/// The kernel's default (flags 0) wakes the reader only for a record that
/// finds the ring empty: the first of a batch. The reader then waits a
/// moment before reading (`app`'s batch delay), so the records that follow
/// need no wake-up of their own: one wake-up handles many. While records
/// keep coming the reader ticks (housekeeping reads the rings anyway), and
/// a record wakes no one: without that, every tick's read left the ring
/// empty and the next record woke the reader once more. A ring filling
/// faster than the reader reads wakes it at once from a quarter full, so
/// that the rest of the ring absorbs the time it takes to be scheduled.
pub fn ring_wakeup_flags(avail: u64, len: u64, ring_size: u64, reader_ticking: bool) -> u64 {
    if avail.saturating_add(len) >= ring_size / RING_WAKEUP_FRACTION {
        BPF_RB_FORCE_WAKEUP
    } else if reader_ticking {
        BPF_RB_NO_WAKEUP
    } else {
        0
    }
}

/// Most bytes of user stack one thread of a dump can carry: a task iterator
/// writes each thread as one record into a 32 KiB buffer, with its headers.
pub const MAX_DUMP_STACK_COPY: u32 = 24 * 1024;

/// Most threads that can be switched out and waiting to be woken at once
/// (`--mode off-cpu` and `--mode wall`); more are not tracked.
pub const MAX_BLOCKED_THREADS: u32 = 65536;

/// Most Python processes whose frames are collected at once.
pub const MAX_PYTHON_PROCESSES: u32 = 4096;

/// Entries of the least-recently-used map from thread id to `PyThreadState`.
pub const MAX_PYTHON_THREADS: u32 = 65536;

/// Most Python frames one record carries, innermost first; deeper stacks are
/// cut ([`PythonStatus::Truncated`]). With [`PythonFrame`]'s 40 bytes they fit
/// in the slack page after the user stack (see [`StackCopy::python_offset`]).
pub const MAX_PYTHON_FRAMES: usize = 96;

/// Most `PyThreadState`s the eBPF program walks to find a thread's own; a
/// thread found is remembered in the `PYTHON_THREADS` map.
pub const MAX_PYTHON_THREADS_SCANNED: u32 = 256;

/// How long the eBPF program trusts that a thread has no `PyThreadState`
/// before it looks again (a thread may start running Python later).
pub const PYTHON_THREAD_RECHECK_NS: u64 = 250_000_000;

/// Bytes of each interpreter frame read at once is less than this (a power
/// of two); [`PythonOffsets`] fields of a frame must lie within them.
pub const PYTHON_FRAME_READ_MAX: u32 = 128;

/// A [`PythonOffsets`] field the interpreter version does not have.
pub const NO_FIELD: u32 = u32::MAX;

/// [`PythonOffsets::thread_match`]: the thread state's id field holds the
/// kernel's thread id (`native_thread_id`, CPython 3.8 and later).
pub const PYTHON_THREAD_MATCH_TID: u32 = 0;

/// [`PythonOffsets::thread_match`]: the thread state's id field holds the
/// thread's `pthread_t` (`thread_id`, CPython 3.6 and 3.7, which have no
/// `native_thread_id`). With glibc on x86_64, `pthread_self()` is the
/// thread's TLS base, which the kernel keeps as `task->thread.fsbase`.
pub const PYTHON_THREAD_MATCH_PTHREAD: u32 = 1;

/// Byte offsets in one CPython version's structures: what the eBPF program
/// needs to find a thread's frames and read each frame's code object and
/// instruction. Userspace fills them from its table of supported versions
/// (or from the offsets the interpreter publishes, 3.13 and later); eBPF
/// programs have no debug info to find them by name.
///
/// Each frame is read in one piece, `frame_read_size` bytes from
/// `frame + frame_read_start`; the `frame_*` field offsets are relative to
/// that start, so a version whose interesting fields lie past the first
/// [`PYTHON_FRAME_READ_MAX`] bytes (3.6's `f_lasti` at 0x78) still fits.
///
/// 18 × u32: 72 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PythonOffsets {
    /// `_PyRuntimeState.interpreters.head`: the first interpreter (0 in 3.6,
    /// where the address given is that of the static `interp_head` itself).
    pub runtime_interpreters_head: u32,
    /// `PyInterpreterState.next`.
    pub interpreter_next: u32,
    /// `PyInterpreterState.threads.head` (`tstate_head` before 3.12): the
    /// interpreter's first thread state.
    pub interpreter_threads_head: u32,
    /// `PyThreadState.next`.
    pub thread_next: u32,
    /// The thread state's id field, an `unsigned long`: `native_thread_id`
    /// or `thread_id`, as [`PythonOffsets::thread_match`] says.
    pub thread_native_id: u32,
    /// Where the current frame hangs off `PyThreadState`: `cframe` (3.11,
    /// 3.12), `current_frame` (3.13), `frame` (3.6 to 3.10).
    pub thread_frame: u32,
    /// `_PyCFrame.current_frame` when `thread_frame` is a `_PyCFrame *`;
    /// [`NO_FIELD`] when `thread_frame` points at the frame itself.
    pub cframe_current_frame: u32,
    /// The frame's code object: `f_code` (`f_executable` in 3.13), relative
    /// to `frame_read_start`.
    pub frame_code: u32,
    /// The next outer frame: `previous` (`f_back` before 3.11), relative to
    /// `frame_read_start`.
    pub frame_previous: u32,
    /// Where the frame is in its code, relative to `frame_read_start`:
    /// `prev_instr` (a pointer, 3.11 and 3.12), `instr_ptr` (3.13), or
    /// `f_lasti` (an int, before 3.11). Sent as read, 8 bytes; userspace
    /// knows which it is.
    pub frame_instruction: u32,
    /// `is_entry` (a bool, 3.11): the first frame of a
    /// `_PyEval_EvalFrameDefault` call; relative to `frame_read_start`.
    pub frame_is_entry: u32,
    /// `owner` (a char, 3.11 and later): who owns the frame's memory; 3.12
    /// marks each `_PyEval_EvalFrameDefault` entry with a C-stack-owned
    /// frame. Relative to `frame_read_start`.
    pub frame_owner: u32,
    /// Bytes to read of each frame, covering every field above; less than
    /// [`PYTHON_FRAME_READ_MAX`].
    pub frame_read_size: u32,
    /// Where in the frame the read starts.
    pub frame_read_start: u32,
    /// What `thread_native_id` holds: [`PYTHON_THREAD_MATCH_TID`] or
    /// [`PYTHON_THREAD_MATCH_PTHREAD`].
    pub thread_match: u32,
    /// Where in a code object its two name pointers lie side by side
    /// (`co_filename`, then `co_name`): 16 bytes read for
    /// [`PythonFrame::code_identity`]. [`NO_FIELD`]: not read.
    pub code_names: u32,
    /// Low bits of the frame's code field that are tags, not address (3.14
    /// stores `f_executable` as a tagged `_PyStackRef`): cleared before the
    /// code object is read.
    pub code_tag_bits: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// A Python process whose frames are collected: the value of the
/// `PYTHON_PROCESSES` map, keyed by tgid.
///
/// u64 then [`PythonOffsets`]: 80 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PythonProcess {
    /// The address of `_PyRuntime` in the process.
    pub runtime: u64,
    pub offsets: PythonOffsets,
}

/// The value of the `PYTHON_THREADS` map, keyed by tid. 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PythonThread {
    /// The thread's `PyThreadState`, or 0: none was found at `checked_ns`.
    pub thread_state: u64,
    /// `bpf_ktime_get_ns` when `thread_state` was found or found missing.
    pub checked_ns: u64,
}

/// One Python frame of a record, as read from the interpreter; userspace
/// reads the code object for its name, file and line.
///
/// 4 × u64, 2 × u32: 40 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PythonFrame {
    /// The `PyCodeObject *`, tag bits cleared.
    pub code: u64,
    /// Which code object lives at `code` now: its `co_filename` and
    /// `co_name` pointers, combined (0 if unread). A code object freed and
    /// another allocated at its address (common while a program starts) has
    /// another identity, so userspace never names a frame after the code
    /// object that was there before.
    pub code_identity: u64,
    /// The raw [`PythonOffsets::frame_instruction`] field.
    pub instruction: u64,
    /// The address of the interpreter frame (locals are read from it).
    pub frame: u64,
    /// The `is_entry` byte, 0 when the version has none.
    pub is_entry: u32,
    /// The `owner` byte, 0 when the version has none.
    pub owner: u32,
}

/// What a record says about the thread's Python frames.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonStatus {
    /// Not a Python process (or Python frames are not collected).
    NotPython = 0,
    /// `python_frames` frames follow the user stack; 0 when the thread runs no Python code.
    Frames = 1,
    /// Like `Frames`, but the frame chain went on past [`MAX_PYTHON_FRAMES`].
    Truncated = 2,
    /// A Python process, but this thread has no `PyThreadState` (a native
    /// thread, or the interpreter is not initialised yet).
    NoThreadState = 3,
    /// The interpreter's memory could not be read.
    Unreadable = 4,
}

impl PythonStatus {
    pub const fn from_u32(status: u32) -> PythonStatus {
        match status {
            1 => PythonStatus::Frames,
            2 => PythonStatus::Truncated,
            3 => PythonStatus::NoThreadState,
            4 => PythonStatus::Unreadable,
            _ => PythonStatus::NotPython,
        }
    }
}

/// Which processes the eBPF program samples. Set once at load time.
///
/// Flags are `u32` instead of `bool` so this type has no implicit padding and
/// every bit pattern is valid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Non-zero: sample every process; zero: only the tgids in the `TARGETS` map.
    pub all_processes: u32,
    /// Non-zero: also sample the idle task (pid 0).
    pub include_idle: u32,
    /// Never sampled: the tgid of the sampler itself.
    pub self_tgid: u32,
    /// Non-zero: collect the user stack.
    pub collect_user: u32,
    /// Non-zero: collect the kernel stack.
    pub collect_kernel: u32,
    /// Non-zero: copy user registers and stack into the ring buffer for
    /// unwinding in userspace, instead of walking frame pointers in the kernel.
    pub copy_user_stack: u32,
    /// Bytes of user stack to copy, at most [`MAX_STACK_COPY`].
    pub stack_copy_bytes: u32,
    /// Non-zero: the `sched_switch` program reports target threads switching
    /// out ([`RecordKind::Blocked`]) and back in ([`RecordKind::Woke`]).
    pub track_switches: u32,
    /// Number of possible CPUs, which sizes the scratch map (see [`ScratchSlot`]).
    pub possible_cpus: u32,
    /// Non-zero (`--cgroup`): only threads whose cgroup, or one of its
    /// ancestors, is in the `CGROUPS` map are sampled, on top of the
    /// process filter above. Checked for the current task only (samples on a
    /// CPU and threads switching out), through
    /// `bpf_get_current_ancestor_cgroup_id`; the task iterator of a dump does
    /// not filter by cgroup.
    pub cgroup_filter: u32,
    /// Byte offsets in the running kernel's `struct task_struct`, read from
    /// its BTF by the loader: Rust eBPF programs have no CO-RE relocations.
    pub task_offsets: TaskOffsets,
    /// Non-zero (`--unwind tables`): walk the user stack in the kernel with
    /// the rows of `UNWIND_ROWS`; a stack they do not cover is copied as
    /// with `copy_user_stack`, which must be set too.
    pub walk_tables: u32,
    /// Number of entries of `UNWIND_ROWS` (its size as loaded).
    pub unwind_rows: u32,
}

/// Byte offsets of the `struct task_struct` fields the eBPF programs read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `pid_t pid`: the thread id.
    pub pid: u32,
    /// `pid_t tgid`: the process id.
    pub tgid: u32,
    /// `unsigned int __state`.
    pub state: u32,
    /// `char comm[16]`.
    pub comm: u32,
    /// `int on_cpu`: non-zero while the task runs on a CPU.
    pub on_cpu: u32,
    /// `thread.fsbase`: the thread's TLS base, its `pthread_self()`; finds
    /// the thread state of CPython 3.6 and 3.7 (see
    /// [`PYTHON_THREAD_MATCH_PTHREAD`]). 0 when the kernel has none.
    pub fsbase: u32,
}

impl TaskOffsets {
    /// Offsets that are not set: programs that need them do nothing.
    pub const UNKNOWN: Self = Self {
        pid: 0,
        tgid: 0,
        state: 0,
        comm: 0,
        on_cpu: 0,
        fsbase: 0,
    };
}

/// Which slot of the `SCRATCH` map a program assembles its record in. Each
/// kind of program has its own slots, so one that interrupts another on the
/// same CPU (a hardware-PMU sample during a context switch) cannot overwrite
/// a record half-written.
pub enum ScratchSlot {}

impl ScratchSlot {
    /// Slot of the `perf_event` program on `cpu`.
    pub const fn sample(cpu: u32) -> u32 {
        cpu
    }
    /// Slot of the `sched_switch` program on `cpu`.
    pub const fn switch(cpu: u32, possible_cpus: u32) -> u32 {
        possible_cpus + cpu
    }
    /// The one slot of the task iterator, which is read by one thread at a time.
    pub const fn iterator(possible_cpus: u32) -> u32 {
        2 * possible_cpus
    }
    /// Entries the `SCRATCH` map needs.
    pub const fn len(possible_cpus: u32) -> u32 {
        2 * possible_cpus + 1
    }
}

impl SamplerConfig {
    /// A configuration that samples nothing; the loader fills it in.
    pub const EMPTY: Self = Self {
        all_processes: 0,
        include_idle: 0,
        self_tgid: 0,
        collect_user: 1,
        collect_kernel: 1,
        copy_user_stack: 0,
        stack_copy_bytes: DEFAULT_STACK_COPY,
        track_switches: 0,
        possible_cpus: 1,
        cgroup_filter: 0,
        task_offsets: TaskOffsets::UNKNOWN,
        walk_tables: 0,
        unwind_rows: 1,
    };
}

/// How an [`UnwindRow`] finds the canonical frame address (CFA), the
/// caller's stack pointer; the return address is always just below it
/// (x86-64). Other values than these are treated as [`CFA_NONE`].
pub mod cfa_rule {
    /// No unwind information here: the stack is copied instead.
    pub const CFA_NONE: u8 = 0;
    /// CFA = rsp + offset.
    pub const CFA_RSP: u8 = 1;
    /// CFA = rbp + offset.
    pub const CFA_RBP: u8 = 2;
    /// A PLT entry's expression: CFA = rsp + 8, plus 8 more once the entry
    /// has pushed: at offset `cfa_offset` (11, or 10) of its 16 bytes or later.
    pub const CFA_PLT: u8 = 3;
    /// The outermost frame (`_start`, a thread's `clone3`): the return
    /// address is undefined, the walk is complete.
    pub const CFA_END: u8 = 4;
    /// A rule the kernel cannot follow (another expression, the return
    /// address elsewhere than below the CFA): the stack is copied.
    pub const CFA_UNSUPPORTED: u8 = 5;
}

/// How an [`UnwindRow`] restores the caller's rbp.
pub mod rbp_rule {
    /// rbp is not saved by this frame: the caller's is the same.
    pub const RBP_SAME: u8 = 0;
    /// The caller's rbp is saved at CFA + `rbp_offset`.
    pub const RBP_AT_CFA: u8 = 1;
    /// Any other rule: rbp is unknown from here on (a CFA based on it then
    /// sends the stack to the copy path).
    pub const RBP_UNKNOWN: u8 = 2;
}

/// One row of a file's compiled call frame information: from `pc` (an
/// address as the file states it, SVMA) up to the next row's `pc`, how to
/// find the caller's registers. Rows of a file are sorted by `pc`; a gap
/// between two functions' information is a [`cfa_rule::CFA_NONE`] row.
///
/// u64, i32, i16, 2 × u8: 16 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u64,
    /// Added to the CFA's base register.
    pub cfa_offset: i32,
    /// Where the caller's rbp is saved, from the CFA ([`rbp_rule::RBP_AT_CFA`]).
    pub rbp_offset: i16,
    /// A [`cfa_rule`] value.
    pub cfa_rule: u8,
    /// A [`rbp_rule`] value.
    pub rbp_rule: u8,
}

/// One executable mapping of a process with its file's rows.
///
/// 3 × u64, 2 × u32: 32 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindMapping {
    /// First address of the mapping in the process (AVMA).
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// AVMA - SVMA: subtracted from an address to look it up in the rows.
    pub bias: u64,
    /// The file's first row in `UNWIND_ROWS`.
    pub rows_start: u32,
    /// How many rows the file has.
    pub rows_len: u32,
}

/// Most executable mappings with rows one process can have; code in more
/// is copied and unwound in userspace.
pub const MAX_UNWIND_MAPPINGS: usize = 128;

/// Most processes with rows at once (`--unwind tables`).
pub const MAX_UNWIND_PROCESSES: u32 = 4096;

/// Most rows one file may have: the kernel's binary search takes
/// log2 of this many steps.
pub const MAX_UNWIND_FILE_ROWS: u32 = 1 << 21;

/// Default bytes of kernel memory for the rows of every file (`--unwind-table-size`).
pub const DEFAULT_UNWIND_TABLE_BYTES: u64 = 32 * 1024 * 1024;

/// Deepest user stack walked with rows; deeper ones are copied.
pub const MAX_TABLE_FRAMES: usize = 96;

/// The value of `UNWIND_PROCESSES`: a process's executable mappings that
/// have rows, sorted by address, `len` of them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindProcess {
    pub len: u32,
    /// Changes whenever userspace rewrites the entry (any value, compared
    /// for equality only): a walk the kernel remembers from another
    /// version of the mappings is walked again, not reused.
    pub version: u32,
    pub mappings: [UnwindMapping; MAX_UNWIND_MAPPINGS],
}

/// Index of the generation word in the `CONTROL` array.
///
/// Counts and stacks are double-buffered: the kernel writes into the maps of
/// the current generation while userspace drains and clears the other one, so
/// no sample is lost or double-counted between a read and a delete.
pub const CONTROL_GENERATION: u32 = 0;

/// Index of the reader's word in the `CONTROL` array: 1 while userspace
/// reads the rings on its housekeeping timer, 0 while it sleeps until a
/// record wakes it (see [`ring_wakeup_flags`]).
///
/// Userspace clears it before its last read of a quiet spell, so a record
/// sent after that read wakes it. A record whose program read the word just
/// before the clear may be sent without a wake-up after that read: it waits
/// for the next record's wake-up, or for the end of the run, and is never lost.
pub const CONTROL_READER_TICKING: u32 = 1;

/// Number of slots in the `CONTROL` array.
pub const CONTROL_LEN: u32 = 2;

/// Key of the count maps: one entry per distinct (thread, cgroup, stacks) seen.
///
/// 48 bytes, no padding: four `u32`/`i32` fields, the 16-byte comm, the
/// 8-byte cgroup id (at offset 32, aligned), then the user stack's
/// [`stack_source`] and 4 reserved bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Id in the generation's stack map, or a negative errno from
    /// `bpf_get_stackid`, or [`STACK_NOT_COLLECTED`]; with
    /// `user_stack_source` [`stack_source::WALKED`], a key of the
    /// generation's walked-stack map (any bit pattern, errors included).
    pub user_stack_id: i32,
    /// Same as `user_stack_id`, for the kernel stack.
    pub kernel_stack_id: i32,
    /// The thread's name, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The thread's cgroup v2 id when sampled (`bpf_get_current_cgroup_id`):
    /// the inode number of its directory under the cgroup2 mount.
    pub cgroup_id: u64,
    /// Which map `user_stack_id` names: a [`stack_source`] value.
    pub user_stack_source: u32,
    /// Reserved, zero. Keeps the size a multiple of 8 for the hash map.
    pub _reserved: u32,
}

/// Where a [`SampleKey`]'s `user_stack_id` points (its `user_stack_source`).
pub mod stack_source {
    /// The generation's stack-trace map (`bpf_get_stackid`, frame pointers),
    /// or an errno / [`crate::STACK_NOT_COLLECTED`]: the value 0, so keys
    /// built before the field existed read the same.
    pub const STACK_MAP: u32 = 0;
    /// The generation's walked-stack map (`--unwind tables`): a
    /// [`crate::WalkedStack`] the eBPF program walked with the rows.
    pub const WALKED: u32 = 1;
}

/// Value of the walked-stack maps (`--unwind tables`): a user stack the
/// eBPF program walked with the rows, stored once per generation and named
/// by the count keys of every sample that walked it (as `bpf_get_stackid`
/// stores frame-pointer stacks).
///
/// The key is [`walked_stack_id`] of [`walked_hash`] over the frames. Two
/// different stacks with the same key are told apart by comparing the
/// stored frames: the second one is sent as a ring-buffer record instead
/// (and counted so), never counted under the first one's frames.
///
/// The frames come first and `len` after them so that the value is the
/// first bytes of a [`StackCopy`]'s stack area, where the walk writes
/// them: it is stored from there without another copy.
///
/// 97 × u64: 776 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkedStack {
    /// The instruction pointer, then each return address, innermost first;
    /// only the first `len` are meaningful.
    pub frames: [u64; MAX_TABLE_FRAMES],
    /// How many of `frames` were walked.
    pub len: u64,
}

impl WalkedStack {
    /// The walked addresses; a `len` past the array (a bad value) is cut to it.
    pub fn addresses(&self) -> &[u64] {
        let len = if self.len > MAX_TABLE_FRAMES as u64 {
            MAX_TABLE_FRAMES
        } else {
            self.len as usize
        };
        self.frames.split_at(len).0
    }
}

/// Where a [`walked_hash`] starts (an arbitrary odd constant).
pub const WALKED_HASH_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// One step of the hash of a walked stack: `hash` so far, then the next
/// address. The eBPF program takes one step per frame as it walks.
#[inline(always)]
pub const fn walked_hash(hash: u64, address: u64) -> u64 {
    // A multiply-rotate mix: each address changes every bit of the result,
    // and the order of the addresses matters.
    (hash ^ address)
        .wrapping_mul(0xff51_afd7_ed55_8ccd)
        .rotate_left(29)
}

/// The key in the walked-stack map of a stack with this [`walked_hash`]:
/// both halves folded into 32 bits, the width of
/// [`SampleKey::user_stack_id`].
#[inline(always)]
pub const fn walked_stack_id(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// Value of the count maps: how often a [`SampleKey`] was seen in one
/// generation, and when first.
///
/// The first time locates the key's addresses in the mappings in force
/// then (a process that exec'd within a drain period has two images; the
/// comm in the key tells their samples apart). Only the first sample of a
/// key reads the clock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleCount {
    /// Samples of the key in this generation.
    pub count: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first of them.
    pub first_ns: u64,
}

/// What a record of the `STACK_COPIES` ring buffer (or of a dump) is; the
/// first `u32` of every record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A [`StackCopy`] taken by the `perf_event` program: the thread is on a CPU.
    Sample = 0,
    /// A [`StackCopy`] taken as a target thread was switched out; `time_ns`
    /// is when, `state` is the task state it went to sleep in.
    Blocked = 1,
    /// A [`WakeRecord`]: a thread reported [`RecordKind::Blocked`] runs again.
    Woke = 2,
    /// A [`StackCopy`] of one thread, written by the task iterator of a dump.
    Snapshot = 3,
}

impl RecordKind {
    pub const fn from_u32(kind: u32) -> Option<RecordKind> {
        match kind {
            0 => Some(RecordKind::Sample),
            1 => Some(RecordKind::Blocked),
            2 => Some(RecordKind::Woke),
            3 => Some(RecordKind::Snapshot),
            _ => None,
        }
    }
}

/// Set in the `kind` word of a packed [`StackCopy`] record: the kernel stack
/// takes only its `kernel_frames` words, and the `stack_len` bytes of user
/// stack (addresses or bytes) follow right after them; no Python frames.
/// Records that short are sent packed (walked stacks, at context switches
/// above all), a third of the bytes of the whole kernel-stack area.
pub const RECORD_PACKED: u32 = 1 << 31;

/// The fixed part of a [`StackCopy`] record.
///
/// 12 × u32, 5 × u64, comm: 104 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackCopyHeader {
    /// A [`RecordKind`], with [`RECORD_PACKED`] set when the record is packed.
    pub kind: u32,
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Number of valid entries in [`StackCopy::kernel`], innermost first.
    pub kernel_frames: u32,
    /// Bytes of [`StackCopy::stack`] that hold user stack, from `sp` upwards
    /// (or, when `user_frames` is non-zero, user return addresses).
    pub stack_len: u32,
    /// Negative errno when the kernel stack could not be read, else 0.
    pub kernel_error: i32,
    /// Non-zero when the user registers could not be read (no user stack).
    pub no_user: u32,
    /// The raw `task_struct.__state` ([`RecordKind::Blocked`], [`RecordKind::Snapshot`]).
    pub state: u32,
    /// The system call the thread is in (`orig_ax`), or -1 (snapshots only).
    pub syscall: i32,
    /// Non-zero: `stack` holds this many user addresses, innermost first,
    /// walked with frame pointers by the kernel, instead of stack bytes.
    pub user_frames: u32,
    /// A [`PythonStatus`].
    pub python_status: u32,
    /// Number of [`PythonFrame`]s at [`StackCopy::python_offset`], innermost first.
    pub python_frames: u32,
    /// User registers to start unwinding from: where the thread was in user
    /// space (the registers saved at kernel entry when sampled in the kernel).
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the record was taken.
    pub time_ns: u64,
    /// The thread's cgroup v2 id (`bpf_get_current_cgroup_id`): the inode
    /// number of its directory under the cgroup2 mount. 0 when unknown (the
    /// task iterator of a dump, which does not run as the task).
    pub cgroup_id: u64,
    /// The thread's name, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// A thread that was switched out runs again ([`RecordKind::Woke`]).
///
/// 4 × u32, 2 × u64: 32 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeRecord {
    /// [`RecordKind::Woke`].
    pub kind: u32,
    pub tid: u32,
    pub tgid: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// When it was switched out: the `time_ns` of its [`RecordKind::Blocked`] record.
    pub start_ns: u64,
    /// When it was switched back in.
    pub end_ns: u64,
}

/// One sample for userspace unwinding, as written to the `STACK_COPIES` ring
/// buffer. Only the header, the kernel stack, `stack_len` bytes of `stack`
/// and then `python_frames` [`PythonFrame`]s are sent: the record is cut
/// after them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackCopy {
    pub header: StackCopyHeader,
    /// Kernel return addresses from `bpf_get_stack`, innermost first.
    pub kernel: [u64; MAX_STACK_DEPTH],
    /// The top of the user stack: the bytes at `sp`, `sp + 1`, ... At most
    /// [`MAX_STACK_COPY`] are used; the extra page lets the verifier prove
    /// that a page-sized read at any offset below the maximum stays inside.
    pub stack: [u8; MAX_STACK_COPY + STACK_COPY_SLACK],
}

/// Slack after [`StackCopy::stack`]: one page.
pub const STACK_COPY_SLACK: usize = 4096;

impl StackCopy {
    /// Bytes before `stack` in a record.
    pub const STACK_OFFSET: usize = core::mem::size_of::<StackCopyHeader>() + 8 * MAX_STACK_DEPTH;

    /// Where the Python frames start in `stack`: after the `stack_len` bytes
    /// of user stack, rounded up to 8 bytes.
    pub const fn python_offset(stack_len: u32) -> usize {
        (stack_len as usize + 7) & !7
    }

    /// Bytes of a packed record (see [`RECORD_PACKED`]).
    pub const fn packed_len(kernel_frames: u32, stack_len: u32) -> usize {
        core::mem::size_of::<StackCopyHeader>() + 8 * kernel_frames as usize + stack_len as usize
    }

    /// Bytes of the record as sent (see [`StackCopy`]).
    pub const fn record_len(stack_len: u32, python_frames: u32) -> usize {
        Self::STACK_OFFSET
            + Self::python_offset(stack_len)
            + python_frames as usize * core::mem::size_of::<PythonFrame>()
    }
}

/// Per-CPU counters, indices into the `COUNTERS` map.
///
/// Stack errors are split by errno (see [`errno`]) the way `bpf_get_stackid`
/// reports them: `EFAULT` (no stack could be read, normal for the user stack of kernel
/// threads), `EEXIST` (hash collision with a different stack already stored),
/// `ENOMEM` (stack map full).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Samples that passed the filters.
    Samples = 0,
    /// Samples lost because the count map was full.
    CountMapFull,
    /// User stack: `EFAULT`.
    UserStackFault,
    /// User stack: `EEXIST`, a hash collision.
    UserStackCollision,
    /// User stack: `ENOMEM`, the stack map is full.
    UserStackMapFull,
    /// User stack: any other error.
    UserStackOther,
    /// Kernel stack: `EFAULT`.
    KernelStackFault,
    /// Kernel stack: `EEXIST`, a hash collision.
    KernelStackCollision,
    /// Kernel stack: `ENOMEM`, the stack map is full.
    KernelStackMapFull,
    /// Kernel stack: any other error.
    KernelStackOther,
    /// Stack copies dropped because the ring buffer was full.
    RingBufferFull,
    /// Stack copies without user stack: the user registers were unreadable.
    UserRegsMissing,
    /// `--unwind tables`: user stacks walked in the kernel with the rows.
    TableUnwound,
    /// `--unwind tables`: copied instead, an address had no rows (a file
    /// not compiled yet or not compilable, JIT code, the table bound hit).
    TableNotCovered,
    /// `--unwind tables`: copied instead, the walk failed (unreadable
    /// stack, unknown rbp, deeper than [`MAX_TABLE_FRAMES`]).
    TableWalkFailed,
    /// `--unwind tables`: of the stacks walked, those counted in the count
    /// maps (the others were sent as ring-buffer records: off-CPU, Python,
    /// a walked-stack id already holding other frames, a full map).
    TableCounted,
    /// `--unwind tables`, at a context switch: of the stacks walked, those
    /// that were the thread's previous walk, reused after re-reading every
    /// word of user memory that walk read and finding it unchanged.
    TableMemoHit,
    /// `--unwind tables`, at a context switch: of the stacks walked, those
    /// walked anew (no previous walk, other registers or mappings, or a
    /// word it read has changed).
    TableMemoMiss,
    /// Samples whose user or kernel stack `bpf_get_stackid` had no room for
    /// (its hash bucket held another stack, or the map was full): sent whole
    /// as ring-buffer records, walked as they would have been, instead of
    /// counted with a `[missing]` stack. A larger `--stack-storage-size`
    /// keeps more of them in the kernel.
    StackMapSent,
}

impl Counter {
    /// Number of counters, the size of the `COUNTERS` map.
    pub const LEN: u32 = 19;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::LEN as usize] = [
        Counter::Samples,
        Counter::CountMapFull,
        Counter::UserStackFault,
        Counter::UserStackCollision,
        Counter::UserStackMapFull,
        Counter::UserStackOther,
        Counter::KernelStackFault,
        Counter::KernelStackCollision,
        Counter::KernelStackMapFull,
        Counter::KernelStackOther,
        Counter::RingBufferFull,
        Counter::UserRegsMissing,
        Counter::TableUnwound,
        Counter::TableNotCovered,
        Counter::TableWalkFailed,
        Counter::TableCounted,
        Counter::TableMemoHit,
        Counter::TableMemoMiss,
        Counter::StackMapSent,
    ];

    /// The counter for a failed `bpf_get_stackid` with this (negative) errno.
    pub const fn for_stack_error(kernel: bool, errno: i32) -> Counter {
        use errno::{EEXIST, EFAULT, ENOMEM};
        match (kernel, -errno) {
            (false, EFAULT) => Counter::UserStackFault,
            (false, EEXIST) => Counter::UserStackCollision,
            (false, ENOMEM) => Counter::UserStackMapFull,
            (false, _) => Counter::UserStackOther,
            (true, EFAULT) => Counter::KernelStackFault,
            (true, EEXIST) => Counter::KernelStackCollision,
            (true, ENOMEM) => Counter::KernelStackMapFull,
            (true, _) => Counter::KernelStackOther,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data without padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::SampleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleCount {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SamplerConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StackCopyHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PythonProcess {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PythonThread {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnwindRow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnwindProcess {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WalkedStack {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn wire_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<SampleKey>(), 4 * 4 + COMM_LEN + 8 + 8);
        assert_eq!(core::mem::size_of::<SampleCount>(), 16);
        assert_eq!(
            core::mem::size_of::<SamplerConfig>(),
            10 * 4 + 6 * 4 + 2 * 4
        );
        assert_eq!(core::mem::size_of::<UnwindRow>(), 16);
        assert_eq!(
            core::mem::size_of::<WalkedStack>(),
            8 * (MAX_TABLE_FRAMES + 1)
        );
        assert_eq!(core::mem::size_of::<UnwindMapping>(), 32);
        assert_eq!(
            core::mem::size_of::<UnwindProcess>(),
            8 + 32 * MAX_UNWIND_MAPPINGS
        );
        assert_eq!(core::mem::size_of::<StackCopyHeader>(), 104);
        assert_eq!(core::mem::size_of::<WakeRecord>(), 32);
        assert_eq!(StackCopy::STACK_OFFSET, 104 + 8 * MAX_STACK_DEPTH);
        assert_eq!(core::mem::size_of::<PythonOffsets>(), 18 * 4);
        assert_eq!(core::mem::size_of::<PythonProcess>(), 8 + 18 * 4);
        assert_eq!(core::mem::size_of::<PythonThread>(), 16);
        assert_eq!(core::mem::size_of::<PythonFrame>(), 40);
        assert_eq!(
            core::mem::size_of::<StackCopy>(),
            StackCopy::STACK_OFFSET + MAX_STACK_COPY + STACK_COPY_SLACK
        );
    }

    #[test]
    fn python_frames_fit_in_the_slack_after_a_full_stack() {
        let python = MAX_PYTHON_FRAMES * core::mem::size_of::<PythonFrame>();
        assert!(
            StackCopy::python_offset(MAX_STACK_COPY as u32) + python
                <= MAX_STACK_COPY + STACK_COPY_SLACK
        );
        assert_eq!(StackCopy::python_offset(13), 16);
        assert_eq!(
            StackCopy::record_len(16, 2),
            StackCopy::STACK_OFFSET + 16 + 2 * 40
        );
    }

    #[test]
    fn walked_stacks_hash_by_order_and_content() {
        let hash = |frames: &[u64]| {
            frames
                .iter()
                .fold(WALKED_HASH_SEED, |h, &a| walked_hash(h, a))
        };
        let chain = hash(&[0x401000, 0x401234, 0x7f00_0000_1000]);
        assert_eq!(chain, hash(&[0x401000, 0x401234, 0x7f00_0000_1000]));
        assert_ne!(chain, hash(&[0x401234, 0x401000, 0x7f00_0000_1000]));
        assert_ne!(chain, hash(&[0x401000, 0x401234]));
        assert_ne!(chain, hash(&[0x401000, 0x401234, 0x7f00_0000_1000, 0]));
        // One bit of one address moves the id.
        assert_ne!(
            walked_stack_id(chain),
            walked_stack_id(hash(&[0x401001, 0x401234, 0x7f00_0000_1000]))
        );
        // The id folds both halves of the hash.
        assert_eq!(walked_stack_id(0x0000_0001_0000_0000), 1);
        assert_eq!(walked_stack_id(0xffff_ffff_ffff_ffff), 0);
    }

    #[test]
    fn a_walked_stack_yields_its_first_len_frames() {
        let mut stack = WalkedStack {
            frames: [7; MAX_TABLE_FRAMES],
            len: 3,
        };
        stack.frames[..3].copy_from_slice(&[0x10, 0x20, 0x30]);
        assert_eq!(stack.addresses(), &[0x10, 0x20, 0x30]);
        stack.len = 0;
        assert!(stack.addresses().is_empty());
        // A bad length never reads past the frames.
        stack.len = u64::MAX;
        assert_eq!(stack.addresses().len(), MAX_TABLE_FRAMES);
    }

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn errno_table_matches_the_kernel() {
        // Spelled out here once more on purpose: these are the kernel's ABI.
        assert_eq!((errno::ENOMEM, errno::EFAULT, errno::EEXIST), (12, 14, 17));
    }

    #[test]
    fn stack_errors_map_to_counters() {
        assert_eq!(
            Counter::for_stack_error(false, -14),
            Counter::UserStackFault
        );
        assert_eq!(
            Counter::for_stack_error(true, -17),
            Counter::KernelStackCollision
        );
        assert_eq!(
            Counter::for_stack_error(true, -12),
            Counter::KernelStackMapFull
        );
        assert_eq!(
            Counter::for_stack_error(false, -22),
            Counter::UserStackOther
        );
    }
}
