//! The kernel half of tripod-bpf: a `perf_event` program that runs on every
//! CPU at the sampling frequency, keeps only the threads we were asked to
//! watch, and counts (thread, user stack, kernel stack) in a hash map.
//!
//! Two ways to get the user stack, chosen at load time:
//! - frame pointers (`--unwind fp`): the kernel's own unwinder
//!   (`bpf_get_stackid`) walks them, and samples are counted here;
//! - a copy (`--unwind dwarf`): the user registers and the top of the user
//!   stack go to a ring buffer, and userspace unwinds them with `.eh_frame`,
//!   which works for code built without frame pointers;
//! - rows compiled from `.eh_frame` (`--unwind tables`, see `tables.rs`):
//!   the walked stack is stored once in a walked-stack map and samples are
//!   counted here as with frame pointers; what the rows do not cover is
//!   copied as in `--unwind dwarf`.
//!
//! Kernel stacks always come from the kernel's unwinder (ORC).
//!
//! Threads of Python processes also get their interpreter frames, read from
//! the interpreter's structures (see `python.rs`) and sent after the user
//! stack; such samples always go through the ring buffer.
//!
//! Two more programs share the maps and the record format:
//! - `track_switch` on `sched_switch` (`--mode off-cpu` and `wall`): a target
//!   thread's stacks as it is switched out, and when it runs again;
//! - `dump_threads`, a sleepable task iterator (`tripod-bpf dump`): every
//!   thread of a process, running or blocked, without stopping it.
//!
//! `probe.rs` holds programs only a measurement loads (see there).
#![no_std]
#![no_main]

mod probe;
mod python;
mod syscall_stack;
mod tables;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{
        pt_regs, seq_file, task_struct, BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_AVAIL_DATA,
        BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_copy_from_user_task, bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id,
            bpf_get_current_task, bpf_get_current_task_btf, bpf_get_smp_processor_id,
            bpf_get_stack, bpf_get_task_stack, bpf_ktime_get_ns, bpf_probe_read_user,
            bpf_seq_write, bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{tracing::StackIdContext, BtfTracePointContext, PerfEventContext},
    EbpfContext,
};
use tripod_common::{
    errno, ring_wakeup_flags, stack_source, Counter, PythonProcess, RecordKind, SampleCount,
    SampleKey, SamplerConfig, ScratchSlot, StackCopy, StackCopyHeader, WakeRecord, WalkedStack,
    CONTROL_GENERATION, CONTROL_LEN, CONTROL_READER_TICKING, DEFAULT_COUNT_MAP_SIZE,
    DEFAULT_RING_BUFFER_SIZE, DEFAULT_STACK_STORAGE_SIZE, MAX_BLOCKED_THREADS, MAX_CGROUPS,
    MAX_CGROUP_LEVEL, MAX_DUMP_STACK_COPY, MAX_PYTHON_FRAMES, MAX_STACK_COPY, MAX_STACK_DEPTH,
    MAX_TARGETS, RECORD_PACKED, STACK_NOT_COLLECTED,
};

/// Set by the loader before the program is loaded; read-only afterwards.
#[no_mangle]
static CONFIG: SamplerConfig = SamplerConfig::EMPTY;

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// The cgroups `--cgroup` selects, by cgroup id (see [`in_selected_cgroup`]).
#[map]
static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_CGROUPS, 0);

#[map]
static CONTROL: Array<u32> = Array::with_max_entries(CONTROL_LEN, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::LEN, 0);

// Two generations of counts and stacks, see `tripod_common::CONTROL_GENERATION`.
// Sizes are defaults; the loader overrides them from the command line.
#[map]
static COUNTS_0: HashMap<SampleKey, SampleCount> =
    HashMap::with_max_entries(DEFAULT_COUNT_MAP_SIZE, 0);
#[map]
static COUNTS_1: HashMap<SampleKey, SampleCount> =
    HashMap::with_max_entries(DEFAULT_COUNT_MAP_SIZE, 0);
#[map]
static STACKS_0: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_STORAGE_SIZE, 0);
#[map]
static STACKS_1: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_STORAGE_SIZE, 0);

/// Carries [`StackCopy`] records to userspace in `--unwind dwarf` mode.
#[map]
static STACK_COPIES: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_SIZE, 0);

/// Where a [`StackCopy`] is assembled: it is too big for the 512-byte BPF
/// stack, and per-CPU map values are capped at 32 KiB. Slots are handed out
/// by [`ScratchSlot`]; the loader sizes the map from the number of CPUs.
#[map]
pub(crate) static SCRATCH: Array<StackCopy> = Array::with_max_entries(1, 0);

/// When each target thread that `track_switch` saw switched out stopped
/// running, by tid. Removed when it runs again.
#[map]
static BLOCKED_SINCE: HashMap<u32, u64> = HashMap::with_max_entries(MAX_BLOCKED_THREADS, 0);

#[perf_event]
pub fn sample_stack(ctx: PerfEventContext) -> u32 {
    match try_sample_stack(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

#[inline(always)]
pub(crate) fn config() -> SamplerConfig {
    // SAFETY: a global the loader wrote before load; volatile so the
    // compiler does not fold in the zeroed default.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

/// Whether threads of process `tgid` are sampled (`tid` 0 is the idle task).
#[inline(always)]
pub(crate) fn is_target(config: &SamplerConfig, tgid: u32, tid: u32) -> bool {
    if tgid == config.self_tgid {
        return false;
    }
    if tid == 0 {
        return config.include_idle != 0;
    }
    config.all_processes != 0 || TARGETS.get_ptr(tgid).is_some()
}

/// Whether the current task passes `--cgroup`: its cgroup, or one of its
/// ancestors, is in `CGROUPS`. Each level's ancestor id is asked for from
/// the root down (`bpf_get_current_ancestor_cgroup_id` answers 0 past the
/// task's own level), so the cost is the depth of the task's cgroup, however
/// many cgroups were selected. Only for the current task: the task iterator
/// of a dump does not run as the task it reads.
#[inline(always)]
pub(crate) fn in_selected_cgroup(config: &SamplerConfig) -> bool {
    if config.cgroup_filter == 0 {
        return true;
    }
    for level in 0..MAX_CGROUP_LEVEL {
        // SAFETY: no preconditions; an out-of-range level gives 0.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            return false;
        }
        if CGROUPS.get_ptr(&id).is_some() {
            return true;
        }
    }
    false
}

/// The current task's cgroup v2 id.
#[inline(always)]
fn current_cgroup() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

fn try_sample_stack(ctx: &PerfEventContext) -> Result<u32, u32> {
    let config = config();
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if !is_target(&config, tgid, tid) || !in_selected_cgroup(&config) {
        return Ok(0);
    }
    bump(Counter::Samples);

    let python = python::process(tgid);
    // Each generation is its own copy of the counting code so the verifier
    // sees fixed maps.
    let generation = CONTROL.get(CONTROL_GENERATION).copied().unwrap_or(0);
    let mut walk = config.walk_tables != 0;
    if walk && python.is_none() {
        // SAFETY: no preconditions.
        let slot = ScratchSlot::sample(unsafe { bpf_get_smp_processor_id() });
        let who = (tgid, tid, slot);
        let walked = if generation & 1 == 0 {
            count_walked(ctx, &config, who, (&STACKS_0, &COUNTS_0, &tables::WALKED_0))
        } else {
            count_walked(ctx, &config, who, (&STACKS_1, &COUNTS_1, &tables::WALKED_1))
        };
        match walked {
            Walked::Counted => return Ok(0),
            Walked::Send(copy) => {
                set_kernel_stack(ctx.as_ptr(), &config, copy);
                send(copy);
                return Ok(0);
            }
            // Copied below, without walking again.
            Walked::NotWalked => walk = false,
        }
    }
    // With `--unwind fp`, a sample in `execve` or `exit` takes its stack
    // from the call's entry (see `syscall_stack`), through the ring buffer;
    // any other is counted here, unless the stack map has no room for one
    // of its stacks: then it is sent whole below, walked the same way.
    let copied = config.copy_user_stack != 0 || python.is_some() || syscall_stack::entered(tid);
    if !copied {
        let counted = if generation & 1 == 0 {
            let user = frame_pointer_stack(ctx, &config, &STACKS_0);
            record(ctx, &config, (tgid, tid), user, (&STACKS_0, &COUNTS_0))
        } else {
            let user = frame_pointer_stack(ctx, &config, &STACKS_1);
            record(ctx, &config, (tgid, tid), user, (&STACKS_1, &COUNTS_1))
        };
        if counted {
            return Ok(0);
        }
        bump(Counter::StackMapSent);
    }
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let who = Thread { tgid, tid, python };
    // Timed so userspace locates the stack in the mappings in force
    // then (the sideband's records carry the same clock).
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let record = (ScratchSlot::sample(cpu), RecordKind::Sample, now);
    if let Some(copy) = current_thread_copy(ctx.as_ptr(), &config, record, &who, walk) {
        send(copy);
    }
    Ok(0)
}

/// What a count key says of the user stack: its `user_stack_id` and
/// `user_stack_source` (see [`SampleKey`]).
struct UserStackId {
    id: i32,
    source: u32,
}

/// The user stack as the kernel walks it with frame pointers, stored in `stacks`.
#[inline(always)]
fn frame_pointer_stack(
    ctx: &PerfEventContext,
    config: &SamplerConfig,
    stacks: &StackTrace,
) -> UserStackId {
    let id = if config.collect_user != 0 {
        stack_id(ctx, stacks, false)
    } else {
        STACK_NOT_COLLECTED
    };
    UserStackId {
        id,
        source: stack_source::STACK_MAP,
    }
}

/// How [`count_walked`] ended.
enum Walked {
    /// The sample is counted in the count map.
    Counted,
    /// Walked, but the stack could not be stored (see [`tables::store`]):
    /// the record in the scratch slot is to be sent, once it has its kernel stack.
    Send(&'static mut StackCopy),
    /// Not walked (the reason is counted): the stack is to be copied.
    NotWalked,
}

/// `--unwind tables` on a CPU: walks the user stack with the rows and
/// counts the sample like [`record`] does with frame pointers, the walked
/// stack stored in `walked` and the kernel stack in `stacks`. `who` is
/// (tgid, tid, scratch slot).
#[inline(always)]
fn count_walked(
    ctx: &PerfEventContext,
    config: &SamplerConfig,
    (tgid, tid, slot): (u32, u32, u32),
    (stacks, counts, walked): (
        &StackTrace,
        &HashMap<SampleKey, SampleCount>,
        &HashMap<u32, WalkedStack>,
    ),
) -> Walked {
    let Some(copy) = SCRATCH.get_ptr_mut(slot) else {
        return Walked::NotWalked;
    };
    // SAFETY: a slot no other running program uses (see `ScratchSlot`).
    let copy = unsafe { &mut *copy };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    begin_record(copy, RecordKind::Sample, tgid, tid, comm, 0, now);
    copy.header.cgroup_id = current_cgroup();
    // SAFETY: helpers called with the current task, which is always valid.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    set_user_regs(copy, config, regs);
    let user = if copy.header.no_user != 0 {
        // As `bpf_get_stackid` reports a thread without user registers.
        let id = match config.collect_user {
            0 => STACK_NOT_COLLECTED,
            _ => -errno::EFAULT,
        };
        UserStackId {
            id,
            source: stack_source::STACK_MAP,
        }
    } else {
        let Some(hash) = tables::walk(copy, slot, tgid) else {
            return Walked::NotWalked;
        };
        bump(Counter::TableUnwound);
        let Some(id) = tables::store(walked, copy, hash) else {
            return Walked::Send(copy);
        };
        UserStackId {
            id: id as i32,
            source: stack_source::WALKED,
        }
    };
    if !record(ctx, config, (tgid, tid), user, (stacks, counts)) {
        bump(Counter::StackMapSent);
        return Walked::Send(copy);
    }
    if copy.header.no_user == 0 {
        bump(Counter::TableCounted);
    }
    Walked::Counted
}

/// Fills in the kernel stack of a record, as the kernel's unwinder sees `ctx`.
#[inline(always)]
fn set_kernel_stack(ctx: *mut c_void, config: &SamplerConfig, copy: &mut StackCopy) {
    if config.collect_kernel != 0 {
        let size = (8 * MAX_STACK_DEPTH) as u32;
        // SAFETY: the buffer is `size` bytes of map memory.
        let read = unsafe { bpf_get_stack(ctx, copy.kernel.as_mut_ptr().cast(), size, 0) };
        set_kernel_frames(copy, read);
    }
}

/// Counts one sample of thread (`tgid`, `tid`) with user stack `user` and
/// the kernel stack, stored in `stacks`, in `counts`. Counts nothing and
/// answers false when the stack map had no room for either stack (see
/// [`refused_by_stack_map`]): the caller sends the sample whole instead.
#[inline(always)]
fn record(
    ctx: &PerfEventContext,
    config: &SamplerConfig,
    (tgid, tid): (u32, u32),
    user: UserStackId,
    (stacks, counts): (&StackTrace, &HashMap<SampleKey, SampleCount>),
) -> bool {
    if user.source == stack_source::STACK_MAP && refused_by_stack_map(user.id) {
        return false;
    }
    let kernel_stack_id = if config.collect_kernel != 0 {
        stack_id(ctx, stacks, true)
    } else {
        STACK_NOT_COLLECTED
    };
    if refused_by_stack_map(kernel_stack_id) {
        return false;
    }
    let key = SampleKey {
        tgid,
        tid,
        user_stack_id: user.id,
        kernel_stack_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        cgroup_id: current_cgroup(),
        user_stack_source: user.source,
        _reserved: 0,
    };
    if increment(counts, &key) {
        return true;
    }
    // First sample of this key. Another CPU may insert it at the same moment:
    // NOEXIST makes that a clean EEXIST, after which the increment succeeds.
    let first = SampleCount {
        count: 1,
        // SAFETY: no preconditions.
        first_ns: unsafe { bpf_ktime_get_ns() },
    };
    if counts.insert(key, first, BPF_NOEXIST as u64).is_err() && !increment(counts, &key) {
        bump(Counter::CountMapFull);
    }
    true
}

/// Page size on x86_64; user stacks end on a page boundary.
const PAGE: u64 = 4096;

/// The thread a record is about.
struct Thread {
    tgid: u32,
    tid: u32,
    /// Its process, if Python frames are collected for it.
    python: Option<PythonProcess>,
}

/// Assembles a [`StackCopy`] of the current thread in its scratch slot: the
/// kernel stack as `ctx` sees it, the user registers and the top of the user
/// stack (or, with `--unwind fp`, the user addresses the kernel walks; with
/// `--unwind tables` and `walk`, the ones the rows walk). `record` is
/// (scratch slot, kind, time).
#[inline(always)]
fn current_thread_copy(
    ctx: *mut c_void,
    config: &SamplerConfig,
    (slot, kind, time_ns): (u32, RecordKind, u64),
    thread: &Thread,
    walk: bool,
) -> Option<&'static mut StackCopy> {
    let copy = SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: a slot no other running program uses (see `ScratchSlot`).
    let copy = unsafe { &mut *copy };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    begin_record(copy, kind, thread.tgid, thread.tid, comm, 0, time_ns);
    copy.header.cgroup_id = current_cgroup();
    set_kernel_stack(ctx, config, copy);

    // The registers saved at kernel entry are the user registers, whether the
    // sample interrupted user code or a system call. Kernel threads have none.
    // SAFETY: helpers called with the current task, which is always valid.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    set_user_regs(copy, config, regs);
    if copy.header.no_user != 0 {
        return Some(copy);
    }
    if config.copy_user_stack == 0 {
        if kind != RecordKind::Sample || !syscall_stack::fill(copy) {
            walk_user_frame_pointers(ctx, copy);
        }
    } else if config.walk_tables != 0 && walk && walk_tables(copy, slot, thread, kind) {
        bump(Counter::TableUnwound);
    } else if kind != RecordKind::Sample || !syscall_stack::fill(copy) {
        let sp = copy.header.sp;
        // SAFETY: `copy_user_stack` calls `read` only with `dst` valid for `len` bytes.
        let read = |dst, len, src| unsafe { read_user(dst, len, src) };
        copy.header.stack_len = copy_user_stack(copy, sp, config.stack_copy_bytes, read);
    }
    if let Some(process) = &thread.python {
        let thread = python::PythonThreadId {
            tid: thread.tid,
            // SAFETY: no preconditions.
            task: unsafe { bpf_get_current_task() },
            fsbase_offset: config.task_offsets.fsbase,
        };
        // SAFETY: `python::collect` calls `read` only with `dst` valid for `len` bytes.
        let read = |dst, len, src| unsafe { read_user(dst, len, src) };
        python::collect(copy, process, &thread, read);
    }
    Some(copy)
}

/// Walks the user stack of a record with the rows; a thread being switched
/// out may reuse its previous walk (see [`tables::walk_remembered`]).
#[inline(always)]
fn walk_tables(copy: &mut StackCopy, slot: u32, thread: &Thread, kind: RecordKind) -> bool {
    let walked = if kind == RecordKind::Blocked {
        tables::walk_remembered(copy, slot, thread.tgid, thread.tid)
    } else {
        tables::walk(copy, slot, thread.tgid)
    };
    walked.is_some()
}

/// Reads `len` bytes of the current process's memory at `src` into `dst`:
/// 0 on success, a negative errno otherwise (`dst` is then zeroed). For
/// non-sleepable programs: a page that is not resident fails, it is not
/// paged in. `src` may be any value; a bad address fails cleanly.
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes: the helper writes all of
/// them, on failure too, and the verifier only checks that they lie inside
/// *some* object it knows, not inside the one the caller meant.
#[inline(always)]
pub(crate) unsafe fn read_user(dst: *mut c_void, len: u32, src: *const c_void) -> i64 {
    // SAFETY: `dst` has `len` writable bytes (this function's contract).
    unsafe { bpf_probe_read_user(dst, len, src) }
}

/// Fills the stack area with the user addresses the kernel walks with frame
/// pointers (`--unwind fp`).
#[inline(always)]
fn walk_user_frame_pointers(ctx: *mut c_void, copy: &mut StackCopy) {
    let size = (8 * MAX_STACK_DEPTH) as u32;
    // SAFETY: the stack area is far larger than `size` bytes.
    let read = unsafe {
        bpf_get_stack(
            ctx,
            copy.stack.as_mut_ptr().cast(),
            size,
            BPF_F_USER_STACK as u64,
        )
    };
    if read > 0 {
        copy.header.user_frames = (read as u32) / 8;
        copy.header.stack_len = read as u32 & !7;
    } else {
        copy.header.no_user = 1;
    }
}

/// Starts a record in a scratch slot: who and when, with no stacks yet.
#[inline(always)]
fn begin_record(
    copy: &mut StackCopy,
    kind: RecordKind,
    tgid: u32,
    tid: u32,
    comm: [u8; 16],
    state: u32,
    time_ns: u64,
) {
    let header = &mut copy.header;
    header.kind = kind as u32;
    header.tgid = tgid;
    header.tid = tid;
    header.comm = comm;
    header.state = state;
    header.kernel_frames = 0;
    header.kernel_error = 0;
    header.stack_len = 0;
    header.user_frames = 0;
    header.python_status = 0;
    header.python_frames = 0;
    header.syscall = -1;
    header.time_ns = time_ns;
    header.cgroup_id = 0;
}

#[inline(always)]
fn set_kernel_frames(copy: &mut StackCopy, read: i64) {
    if read >= 0 {
        copy.header.kernel_frames = (read as u32) / 8;
    } else {
        copy.header.kernel_error = read as i32;
    }
}

/// Copies ip, sp and bp from `regs`, or marks the record as having no user stack.
#[inline(always)]
fn set_user_regs(copy: &mut StackCopy, config: &SamplerConfig, regs: *const pt_regs) {
    // SAFETY: probe reads of kernel memory; failures leave zeros.
    let (ip, sp, bp) = unsafe {
        (
            bpf_probe_read_kernel(&(*regs).rip).unwrap_or(0),
            bpf_probe_read_kernel(&(*regs).rsp).unwrap_or(0),
            bpf_probe_read_kernel(&(*regs).rbp).unwrap_or(0),
        )
    };
    copy.header.ip = ip;
    copy.header.sp = sp;
    copy.header.bp = bp;
    copy.header.no_user = u32::from(config.collect_user == 0 || ip == 0 || sp == 0);
    if copy.header.no_user != 0 && config.collect_user != 0 {
        bump(Counter::UserRegsMissing);
    }
}

/// The record as sent: the header, the kernel stack, then only the valid
/// bytes of the user stack and the Python frames after it.
#[inline(always)]
fn record_bytes(copy: &StackCopy) -> &[u8] {
    let mut stack_len = copy.header.stack_len;
    if stack_len > MAX_STACK_COPY as u32 {
        stack_len = MAX_STACK_COPY as u32;
    }
    let mut python_frames = copy.header.python_frames;
    if python_frames > MAX_PYTHON_FRAMES as u32 {
        python_frames = MAX_PYTHON_FRAMES as u32;
    }
    let len = StackCopy::record_len(stack_len, python_frames);
    // SAFETY: a prefix of the scratch slot, which is `size_of::<StackCopy>()`
    // bytes: both parts are clamped to what fits (see `StackCopy::python_offset`).
    unsafe { core::slice::from_raw_parts((copy as *const StackCopy).cast::<u8>(), len) }
}

/// Whether sending `len` more bytes should wake the reader now (see
/// [`tripod_common::ring_wakeup_flags`]): most records wake no one.
#[inline(always)]
fn wakeup_flags(len: usize) -> u64 {
    let avail = STACK_COPIES.query(BPF_RB_AVAIL_DATA as u64);
    let size = STACK_COPIES.query(BPF_RB_RING_SIZE as u64);
    let ticking = CONTROL.get(CONTROL_READER_TICKING).copied().unwrap_or(0) != 0;
    ring_wakeup_flags(avail, len as u64, size, ticking)
}

/// Packs a short record in place (see [`RECORD_PACKED`]): its user stack
/// moved down to right after its kernel frames, over the unused rest of
/// the kernel-stack area. Its length, or `None` when it is left whole:
/// Python frames, or more user stack than the kernel-stack area holds.
#[inline(always)]
fn pack(copy: &mut StackCopy) -> Option<usize> {
    let (kernel_frames, stack_len) = (copy.header.kernel_frames, copy.header.stack_len);
    if copy.header.python_frames != 0
        || kernel_frames > MAX_STACK_DEPTH as u32
        || stack_len > 8 * MAX_STACK_DEPTH as u32
        || stack_len & 7 != 0
    {
        return None;
    }
    // The kernel-stack area and the stack area are one run of words after
    // the header (`StackCopy` is `repr(C)`, the header 8-byte aligned).
    // SAFETY: the offset is inside the slot.
    let words = unsafe {
        (copy as *mut StackCopy)
            .cast::<u8>()
            .add(core::mem::size_of::<StackCopyHeader>())
            .cast::<u64>()
    };
    let mut index = 0;
    // Word by word from the front: the destination is below the source,
    // so a word is read before anything overwrites it.
    while index < MAX_STACK_DEPTH as u32 {
        if index >= stack_len / 8 {
            break;
        }
        // SAFETY: both indices are below 2 × MAX_STACK_DEPTH (masked for the
        // verifier below 256 words, inside the kernel and stack areas).
        unsafe {
            let word = words
                .add((MAX_STACK_DEPTH as u32 + index) as usize & 255)
                .read();
            words
                .add((kernel_frames + index) as usize & 255)
                .write(word);
        }
        index += 1;
    }
    copy.header.kind |= RECORD_PACKED;
    Some(StackCopy::packed_len(kernel_frames, stack_len))
}

/// Sends a record to userspace, packed if it is short (see [`pack`]).
/// Never waits: a full ring buffer drops it and counts it.
#[inline(always)]
fn send(copy: &mut StackCopy) -> bool {
    let bytes = match pack(copy) {
        // SAFETY: a prefix of the scratch slot (`len` is at most the header
        // and two areas of `MAX_STACK_DEPTH` words).
        Some(len) => unsafe {
            core::slice::from_raw_parts((copy as *const StackCopy).cast::<u8>(), len)
        },
        None => record_bytes(copy),
    };
    let sent = STACK_COPIES
        .output::<[u8]>(bytes, wakeup_flags(bytes.len()))
        .is_ok();
    if !sent {
        bump(Counter::RingBufferFull);
    }
    sent
}

/// Copies up to `wanted` bytes of user stack from `sp` upwards with `read`,
/// stopping at the first page that cannot be read (the end of the stack).
/// Reads go page by page so the bytes just below the stack's end are never
/// lost to a read that crosses it. Returns the bytes copied.
///
/// `read(dst, len, src)` is only ever called with `dst` valid for writes of
/// `len` bytes, inside `copy.stack`: what [`read_user`] requires.
#[inline(always)]
fn copy_user_stack(
    copy: &mut StackCopy,
    sp: u64,
    wanted: u32,
    read: impl Fn(*mut c_void, u32, *const c_void) -> i64,
) -> u32 {
    // SAFETY: `copy.stack` is `MAX_STACK_COPY` bytes and a page of slack.
    unsafe { copy_user_pages::<MAX_STACK_COPY>(copy.stack.as_mut_ptr(), sp, wanted, read) }
}

/// [`copy_user_stack`] into the `MAX` bytes at `base` (a power of two).
///
/// # Safety
///
/// `base` must be valid for writes of `MAX` bytes and one page after them.
#[inline(always)]
pub(crate) unsafe fn copy_user_pages<const MAX: usize>(
    base: *mut u8,
    sp: u64,
    wanted: u32,
    read: impl Fn(*mut c_void, u32, *const c_void) -> i64,
) -> u32 {
    let limit = if wanted as usize > MAX {
        MAX as u32
    } else {
        wanted
    };
    let mut copied: u32 = 0;
    // The first read runs to the next page boundary, then whole pages.
    let mut chunk = (PAGE - (sp & (PAGE - 1))) as u32;
    for _ in 0..(MAX / PAGE as usize + 1) {
        if copied >= limit {
            break;
        }
        if chunk > limit - copied {
            chunk = limit - copied;
        }
        if chunk == 0 || chunk as usize > PAGE as usize {
            break;
        }
        // `copied < limit <= MAX`, a power of two, so the mask changes
        // nothing but lets the verifier bound the offset; the slack page after
        // the buffer covers offset + chunk.
        let offset = copied as usize & (MAX - 1);
        // SAFETY: `base + offset .. + chunk` is inside the buffer (see above).
        let dst = unsafe { base.add(offset) };
        if read(dst.cast(), chunk, (sp + copied as u64) as *const c_void) != 0 {
            break;
        }
        copied += chunk;
        chunk = PAGE as u32;
    }
    copied
}

/// `sched_switch(preempt, prev, next, prev_state)`, in the context of `prev`.
///
/// A target thread leaving the CPU gets its stacks sent as a
/// [`RecordKind::Blocked`] record and its time noted; when it is switched back
/// in, a [`RecordKind::Woke`] record says for how long it was away. Userspace
/// pairs the two: the unwinding (and its cost) happens once per wait.
#[btf_tracepoint(function = "sched_switch")]
pub fn track_switch(ctx: BtfTracePointContext) -> i32 {
    let config = config();
    if config.track_switches == 0 {
        return 0;
    }
    // The clock is read only for target threads: this runs at every context
    // switch of the machine.
    switched_in(&ctx, &config);
    switched_out(&ctx, &config);
    0
}

/// Task states in which a thread is leaving for good, not waiting.
const EXITING: u32 = 0x10 | 0x20 | 0x80; // EXIT_DEAD | EXIT_ZOMBIE | TASK_DEAD

#[inline(always)]
fn switched_out(ctx: &BtfTracePointContext, config: &SamplerConfig) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    if tid == 0 || !is_target(config, tgid, tid) || !in_selected_cgroup(config) {
        return;
    }
    let preempted: u64 = ctx.arg(0);
    let prev_state: u32 = ctx.arg(3);
    if prev_state & EXITING != 0 {
        if config.walk_tables != 0 {
            tables::forget(tid);
        }
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // Noted first: a wait that cannot be timed is not reported at all, so
    // userspace never holds one that no wake-up will end.
    if BLOCKED_SINCE.insert(tid, now, 0).is_err() {
        bump(Counter::CountMapFull);
        return;
    }
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let slot = ScratchSlot::switch(cpu, config.possible_cpus);
    let who = Thread {
        tgid,
        tid,
        python: python::process(tgid),
    };
    let record = (slot, RecordKind::Blocked, now);
    let Some(copy) = current_thread_copy(ctx.as_ptr(), config, record, &who, true) else {
        return;
    };
    // Preempted threads are runnable whatever `__state` says.
    copy.header.state = if preempted != 0 { 0 } else { prev_state };
    // Timed even when its stacks were dropped (a full ring buffer): its time
    // is then reported without them rather than lost.
    send(copy);
}

#[inline(always)]
fn switched_in(ctx: &BtfTracePointContext, config: &SamplerConfig) {
    let next: u64 = ctx.arg(2);
    let Some(tid) = read_task_field::<u32>(next, config.task_offsets.pid) else {
        return;
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(&start) = (unsafe { BLOCKED_SINCE.get(tid) }) else {
        return;
    };
    let _ = BLOCKED_SINCE.remove(tid);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // Sent for every wait, however short: userspace holds the wait until this
    // ends it, and applies `--min-block-us` itself.
    let record = WakeRecord {
        kind: RecordKind::Woke as u32,
        tid,
        tgid: read_task_field::<u32>(next, config.task_offsets.tgid).unwrap_or(0),
        _reserved: 0,
        start_ns: start,
        end_ns: now,
    };
    let flags = wakeup_flags(core::mem::size_of::<WakeRecord>());
    if STACK_COPIES.output::<WakeRecord>(&record, flags).is_err() {
        bump(Counter::RingBufferFull);
    }
}

/// Reads a field of a `task_struct` at an offset found in the kernel's BTF.
#[inline(always)]
fn read_task_field<T>(task: u64, offset: u32) -> Option<T> {
    if task == 0 || offset == 0 {
        return None;
    }
    // SAFETY: a probe read; a bad address fails cleanly.
    unsafe { bpf_probe_read_kernel((task + offset as u64) as *const T).ok() }
}

/// `struct bpf_iter_meta`.
#[repr(C)]
struct IterMeta {
    seq: *mut seq_file,
    session_id: u64,
    seq_num: u64,
}

/// `struct bpf_iter__task`: the context of a task iterator.
#[repr(C)]
struct IterTask {
    meta: *mut IterMeta,
    /// NULL once, after the last task.
    task: *mut task_struct,
}

/// A sleepable task iterator: one [`RecordKind::Snapshot`] record per thread
/// of the target processes, written to the iterator's output. Threads are not
/// stopped: each one's kernel stack, saved user registers and the top of its
/// user stack are read as they are (sleepable, so the user stack may be paged in).
#[no_mangle]
#[link_section = "iter.s/task"]
pub fn dump_threads(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel passes a `bpf_iter__task`.
    let ctx = unsafe { &*(ctx as *const IterTask) };
    let task = ctx.task;
    if task.is_null() {
        return 0;
    }
    let config = config();
    let offsets = &config.task_offsets;
    let address = task as u64;
    let (Some(tid), Some(tgid)) = (
        read_task_field::<u32>(address, offsets.pid),
        read_task_field::<u32>(address, offsets.tgid),
    ) else {
        return 0;
    };
    if tid == 0 || !is_target(&config, tgid, tid) {
        return 0;
    }
    let Some(copy) = SCRATCH.get_ptr_mut(ScratchSlot::iterator(config.possible_cpus)) else {
        return 0;
    };
    // SAFETY: the iterator's own slot; one iteration runs at a time.
    let copy = unsafe { &mut *copy };
    begin_record(
        copy,
        RecordKind::Snapshot,
        tgid,
        tid,
        read_task_field(address, offsets.comm).unwrap_or([0; 16]),
        read_task_field(address, offsets.state).unwrap_or(0),
        // SAFETY: no preconditions.
        unsafe { bpf_ktime_get_ns() },
    );
    let on_cpu = read_task_field::<i32>(address, offsets.on_cpu).unwrap_or(0) != 0;

    // A thread on a CPU has no saved kernel stack to read (its record has no
    // kernel frames), and the registers saved at its last kernel entry are
    // only a recent guess.
    if !on_cpu && config.collect_kernel != 0 {
        let size = (8 * MAX_STACK_DEPTH) as u32;
        // SAFETY: the buffer is `size` bytes of map memory; `task` is a valid task.
        let read = unsafe { bpf_get_task_stack(task, copy.kernel.as_mut_ptr().cast(), size, 0) };
        set_kernel_frames(copy, read);
    }
    // SAFETY: `task` is valid for the duration of this call.
    let regs = unsafe { bpf_task_pt_regs(task) } as *const pt_regs;
    set_user_regs(copy, &config, regs);
    // Kernel threads never entered from user space: their saved registers
    // are zeros (no user ip), and an orig_rax of 0 would read as `read`.
    if !on_cpu && copy.header.ip != 0 {
        // SAFETY: a probe read of kernel memory.
        let syscall = unsafe { bpf_probe_read_kernel(&(*regs).orig_rax) }.unwrap_or(-1i64 as u64);
        copy.header.syscall = syscall as i64 as i32;
    }
    if copy.header.no_user == 0 {
        copy_user_half(copy, &config, task, tgid, tid);
    }
    let record = record_bytes(copy);
    // SAFETY: the iterator's seq_file, and a record of `len` bytes.
    unsafe {
        let seq = (*ctx.meta).seq;
        bpf_seq_write(seq, record.as_ptr().cast(), record.len() as u32);
    }
    0
}

/// The user half of a dumped thread: the top of its user stack, read
/// through its mm, and its Python frames if its process runs Python.
#[inline(always)]
fn copy_user_half(
    copy: &mut StackCopy,
    config: &SamplerConfig,
    task: *mut task_struct,
    tgid: u32,
    tid: u32,
) {
    let wanted = if config.stack_copy_bytes > MAX_DUMP_STACK_COPY {
        MAX_DUMP_STACK_COPY
    } else {
        config.stack_copy_bytes
    };
    let sp = copy.header.sp;
    let read_task = |dst, len, src| {
        // SAFETY: `copy_user_stack` and `python::collect` call this only
        // with `dst` valid for `len` bytes; `task` is valid for this call,
        // and its memory is read through its mm.
        unsafe { bpf_copy_from_user_task(dst, len, src, task, 0) }
    };
    copy.header.stack_len = copy_user_stack(copy, sp, wanted, read_task);
    if let Some(process) = python::process(tgid) {
        let thread = python::PythonThreadId {
            tid,
            task: task as u64,
            fsbase_offset: config.task_offsets.fsbase,
        };
        python::collect(copy, &process, &thread, read_task);
    }
}

/// The id `bpf_get_stackid` stores the current kernel or user stack under,
/// or its negative errno (counted, unless the map had no room: see
/// [`refused_by_stack_map`]).
#[inline(always)]
fn stack_id(ctx: &PerfEventContext, stacks: &StackTrace, kernel: bool) -> i32 {
    let flags = if kernel { 0 } else { BPF_F_USER_STACK as u64 };
    match ctx.get_stackid(stacks, flags) {
        Ok(id) => id as i32,
        Err(errno) => {
            if !refused_by_stack_map(errno) {
                bump(Counter::for_stack_error(kernel, errno));
            }
            errno
        }
    }
}

/// Whether `bpf_get_stackid` answered that its map had no room for a
/// stack: its hash bucket holds a different stack (`EEXIST`; the map
/// hashes stacks into as many buckets as it has entries, so two of a
/// thousand stacks share one in 16,384 buckets often enough) or the map is
/// full (`ENOMEM`). Such a sample is sent whole as a record rather than
/// counted with a `[missing]` stack ([`Counter::StackMapSent`]).
#[inline(always)]
fn refused_by_stack_map(id: i32) -> bool {
    id == -errno::EEXIST || id == -errno::ENOMEM
}

#[inline(always)]
fn increment(counts: &HashMap<SampleKey, SampleCount>, key: &SampleKey) -> bool {
    match counts.get_ptr_mut(key) {
        Some(count) => {
            // SAFETY: the pointer is to a live map value. A plain add is exact:
            // the key holds the thread id, and a thread is sampled only on the
            // CPU it runs on (the idle tasks differ by comm, `swapper/N`).
            unsafe { (*count).count += 1 };
            true
        }
        None => false,
    }
}

#[inline(always)]
pub(crate) fn bump(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on their CPU.
        unsafe { *value += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as required for the tracing helpers.
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
