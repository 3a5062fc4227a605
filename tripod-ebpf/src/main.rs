//! The kernel half of tripod-bpf: a `perf_event` program that runs on every
//! CPU at the sampling frequency, keeps only the threads we were asked to
//! watch, and counts (thread, user stack, kernel stack) in a hash map.
//!
//! Two ways to get the user stack, chosen at load time:
//! - frame pointers (`--unwind fp`): the kernel's own unwinder
//!   (`bpf_get_stackid`) walks them, and samples are counted here;
//! - a copy (`--unwind dwarf`): the user registers and the top of the user
//!   stack go to a ring buffer, and userspace unwinds them with `.eh_frame`,
//!   which works for code built without frame pointers.
//!
//! Kernel stacks always come from the kernel's unwinder (ORC).
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_get_stack, bpf_probe_read_user,
            bpf_task_pt_regs,
        },
    },
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{tracing::StackIdContext, PerfEventContext},
    EbpfContext,
};
use tripod_common::{
    Counter, SampleKey, SamplerConfig, StackCopy, CONTROL_GENERATION, CONTROL_LEN,
    DEFAULT_COUNT_MAP_SIZE, DEFAULT_RING_BUFFER_SIZE, DEFAULT_STACK_STORAGE_SIZE, MAX_STACK_COPY,
    MAX_STACK_DEPTH, MAX_TARGETS, STACK_NOT_COLLECTED,
};

/// Set by the loader before the program is loaded; read-only afterwards.
#[no_mangle]
static CONFIG: SamplerConfig = SamplerConfig::EMPTY;

#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
static CONTROL: Array<u32> = Array::with_max_entries(CONTROL_LEN, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::LEN, 0);

// Two generations of counts and stacks, see `tripod_common::CONTROL_GENERATION`.
// Sizes are defaults; the loader overrides them from the command line.
#[map]
static COUNTS_0: HashMap<SampleKey, u64> = HashMap::with_max_entries(DEFAULT_COUNT_MAP_SIZE, 0);
#[map]
static COUNTS_1: HashMap<SampleKey, u64> = HashMap::with_max_entries(DEFAULT_COUNT_MAP_SIZE, 0);
#[map]
static STACKS_0: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_STORAGE_SIZE, 0);
#[map]
static STACKS_1: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_STORAGE_SIZE, 0);

/// Carries [`StackCopy`] records to userspace in `--unwind dwarf` mode.
#[map]
static STACK_COPIES: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_SIZE, 0);

/// Where a [`StackCopy`] is assembled, one slot per CPU: it is too big for the
/// 512-byte BPF stack, and per-CPU map values are capped at 32 KiB. The loader
/// sets the number of slots to the number of possible CPUs.
#[map]
static SCRATCH: Array<StackCopy> = Array::with_max_entries(1, 0);

#[perf_event]
pub fn sample_stack(ctx: PerfEventContext) -> u32 {
    match try_sample_stack(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret,
    }
}

fn try_sample_stack(ctx: &PerfEventContext) -> Result<u32, u32> {
    // SAFETY: a global the loader wrote before load; volatile so the
    // compiler does not fold in the zeroed default.
    let config = unsafe { core::ptr::read_volatile(&CONFIG) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;

    if tgid == config.self_tgid {
        return Ok(0);
    }
    if tid == 0 {
        if config.include_idle == 0 {
            return Ok(0);
        }
    } else if config.all_processes == 0 && TARGETS.get_ptr(tgid).is_none() {
        return Ok(0);
    }
    bump(Counter::Samples);

    if config.copy_user_stack != 0 {
        copy_stacks(ctx, &config, tgid, tid);
        return Ok(0);
    }

    // Each generation is its own copy of `record` so the verifier sees fixed maps.
    let generation = CONTROL.get(CONTROL_GENERATION).copied().unwrap_or(0);
    if generation & 1 == 0 {
        record(ctx, &config, tgid, tid, &STACKS_0, &COUNTS_0);
    } else {
        record(ctx, &config, tgid, tid, &STACKS_1, &COUNTS_1);
    }
    Ok(0)
}

#[inline(always)]
fn record(
    ctx: &PerfEventContext,
    config: &SamplerConfig,
    tgid: u32,
    tid: u32,
    stacks: &StackTrace,
    counts: &HashMap<SampleKey, u64>,
) {
    let user_stack_id = if config.collect_user != 0 {
        stack_id(ctx, stacks, false)
    } else {
        STACK_NOT_COLLECTED
    };
    let kernel_stack_id = if config.collect_kernel != 0 {
        stack_id(ctx, stacks, true)
    } else {
        STACK_NOT_COLLECTED
    };
    let key = SampleKey {
        tgid,
        tid,
        user_stack_id,
        kernel_stack_id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _reserved: [0; 2],
    };
    if increment(counts, &key) {
        return;
    }
    // First sample of this key. Another CPU may insert it at the same moment:
    // NOEXIST makes that a clean EEXIST, after which the increment succeeds.
    if counts.insert(&key, 1, BPF_NOEXIST as u64).is_err() && !increment(counts, &key) {
        bump(Counter::CountMapFull);
    }
}

/// Page size on x86_64; user stacks end on a page boundary.
const PAGE: u64 = 4096;

/// Sends the kernel stack, the user registers and the top of the user stack
/// to userspace. Never waits: a full ring buffer drops the sample and counts it.
#[inline(always)]
fn copy_stacks(ctx: &PerfEventContext, config: &SamplerConfig, tgid: u32, tid: u32) {
    // SAFETY: no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(copy) = SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: this CPU's slot; perf-event programs neither migrate nor nest on a CPU.
    let copy = unsafe { &mut *copy };
    let header = &mut copy.header;
    header.tgid = tgid;
    header.tid = tid;
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    header.kernel_frames = 0;
    header.kernel_error = 0;
    header.stack_len = 0;

    if config.collect_kernel != 0 {
        let size = (8 * MAX_STACK_DEPTH) as u32;
        // SAFETY: the buffer is `size` bytes of map memory.
        let read = unsafe { bpf_get_stack(ctx.as_ptr(), copy.kernel.as_mut_ptr().cast(), size, 0) };
        if read >= 0 {
            copy.header.kernel_frames = (read as u32) / 8;
        } else {
            copy.header.kernel_error = read as i32;
        }
    }

    // The registers saved at kernel entry are the user registers, whether the
    // sample interrupted user code or a system call. Kernel threads have none.
    // SAFETY: helpers called with the current task, which is always valid.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
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
    if copy.header.no_user == 0 {
        copy.header.stack_len = copy_user_stack(copy, sp, config.stack_copy_bytes);
    } else if config.collect_user != 0 {
        bump(Counter::UserRegsMissing);
    }

    let mut len = copy.header.stack_len as usize;
    if len > MAX_STACK_COPY {
        len = MAX_STACK_COPY;
    }
    // SAFETY: the record is a prefix of the scratch slot, which is `size_of::<StackCopy>()` bytes.
    let record = unsafe {
        core::slice::from_raw_parts(
            (copy as *const StackCopy).cast::<u8>(),
            StackCopy::STACK_OFFSET + len,
        )
    };
    if STACK_COPIES.output::<[u8]>(record, 0).is_err() {
        bump(Counter::RingBufferFull);
    }
}

/// Copies up to `wanted` bytes of user stack from `sp` upwards, stopping at
/// the first page that cannot be read (the end of the stack). Reads go page by
/// page so the bytes just below the stack's end are never lost to a read that
/// crosses it. Returns the bytes copied.
#[inline(always)]
fn copy_user_stack(copy: &mut StackCopy, sp: u64, wanted: u32) -> u32 {
    let limit = if wanted as usize > MAX_STACK_COPY {
        MAX_STACK_COPY as u32
    } else {
        wanted
    };
    let base = copy.stack.as_mut_ptr();
    let mut copied: u32 = 0;
    // The first read runs to the next page boundary, then whole pages.
    let mut chunk = (PAGE - (sp & (PAGE - 1))) as u32;
    for _ in 0..(MAX_STACK_COPY / PAGE as usize + 1) {
        if copied >= limit {
            break;
        }
        if chunk > limit - copied {
            chunk = limit - copied;
        }
        if chunk == 0 || chunk as usize > PAGE as usize {
            break;
        }
        // `copied < limit <= MAX_STACK_COPY`, a power of two, so the mask changes
        // nothing but lets the verifier bound the offset; the slack page after
        // `stack` covers offset + chunk.
        let offset = copied as usize & (MAX_STACK_COPY - 1);
        // SAFETY: `base + offset .. + chunk` is inside `copy.stack` (see above).
        let read = unsafe {
            bpf_probe_read_user(
                base.add(offset).cast::<c_void>(),
                chunk,
                (sp + copied as u64) as *const c_void,
            )
        };
        if read != 0 {
            break;
        }
        copied += chunk;
        chunk = PAGE as u32;
    }
    copied
}

#[inline(always)]
fn stack_id(ctx: &PerfEventContext, stacks: &StackTrace, kernel: bool) -> i32 {
    let flags = if kernel { 0 } else { BPF_F_USER_STACK as u64 };
    match ctx.get_stackid(stacks, flags) {
        Ok(id) => id as i32,
        Err(errno) => {
            bump(Counter::for_stack_error(kernel, errno));
            errno
        }
    }
}

#[inline(always)]
fn increment(counts: &HashMap<SampleKey, u64>, key: &SampleKey) -> bool {
    match counts.get_ptr_mut(key) {
        Some(count) => {
            // SAFETY: the pointer is to a live map value. A plain add is exact:
            // the key holds the thread id, and a thread is sampled only on the
            // CPU it runs on (the idle tasks differ by comm, `swapper/N`).
            unsafe { *count += 1 };
            true
        }
        None => false,
    }
}

#[inline(always)]
fn bump(counter: Counter) {
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
