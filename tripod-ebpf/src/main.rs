//! The kernel half of tripod-bpf: a `perf_event` program that runs on every
//! CPU at the sampling frequency, keeps only the threads we were asked to
//! watch, and counts (thread, user stack, kernel stack) in a hash map.
//!
//! Stacks come from the kernel's own unwinder (`bpf_get_stackid`): frame
//! pointers for user space, ORC for the kernel. Nothing here allocates or
//! loops; a sample costs two stack walks and two map updates.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, perf_event},
    maps::{Array, HashMap, PerCpuArray, StackTrace},
    programs::{tracing::StackIdContext, PerfEventContext},
};
use tripod_common::{
    Counter, SampleKey, SamplerConfig, CONTROL_GENERATION, CONTROL_LEN, DEFAULT_COUNT_MAP_SIZE,
    DEFAULT_STACK_STORAGE_SIZE, MAX_TARGETS, STACK_NOT_COLLECTED,
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
