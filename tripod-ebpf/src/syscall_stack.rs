//! The user stack of a thread as it enters `execve` or `exit`, for the
//! samples taken while it is in there (see `tripod_common::syscall_stack`
//! for why: both calls take the address space away before they return).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{pt_regs, BPF_F_USER_STACK},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_get_stack, bpf_ktime_get_ns, bpf_task_pt_regs},
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext,
};
use tripod_common::{
    syscall_stack::{SyscallStack, MAX_SYSCALL_STACKS, SYSCALL_NUMBERS, SYSCALL_STACK_COPY},
    StackCopy, MAX_STACK_COPY, MAX_STACK_DEPTH,
};

use crate::{config, copy_user_pages, in_selected_cgroup, is_target, read_user};

/// Each thread's entry stack, by tid. The sampling program only reads it
/// (LRU updates take locks an NMI must not re-enter; lookups take none).
#[map]
static SYSCALL_STACKS: LruHashMap<u32, SyscallStack> =
    LruHashMap::with_max_entries(MAX_SYSCALL_STACKS, 0);

/// Where an entry is assembled before it is stored: too big for the BPF stack.
/// Only this program uses it, and it cannot nest on a CPU.
#[map]
static SYSCALL_STACK_SCRATCH: PerCpuArray<SyscallStack> = PerCpuArray::with_max_entries(1, 0);

/// Whether the current thread is in one of the calls whose entry stacks
/// are kept and left one: only its samples look it up.
#[inline(always)]
pub fn entered(tid: u32) -> bool {
    in_kept_call() && SYSCALL_STACKS.get_ptr(&tid).is_some()
}

/// Whether the system call the current thread is in (if any) is one of
/// [`SYSCALL_NUMBERS`].
#[inline(always)]
fn in_kept_call() -> bool {
    // SAFETY: helpers called with the current task, which is always valid;
    // a probe read of kernel memory, a failure reads as no call.
    let call = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        bpf_probe_read_kernel(&(*regs).orig_rax).unwrap_or(u64::MAX)
    };
    SYSCALL_NUMBERS.contains(&call)
}

/// The user registers saved at kernel entry: (ip, sp, bp).
#[inline(always)]
fn user_regs() -> (u64, u64, u64) {
    // SAFETY: helpers called with the current task, which is always valid;
    // probe reads of kernel memory, failures leave zeros.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        (
            bpf_probe_read_kernel(&(*regs).rip).unwrap_or(0),
            bpf_probe_read_kernel(&(*regs).rsp).unwrap_or(0),
            bpf_probe_read_kernel(&(*regs).rbp).unwrap_or(0),
        )
    }
}

/// A target thread enters `execve`, `execveat`, `exit` or `exit_group`:
/// its user stack is copied while its address space is still there.
#[tracepoint]
pub fn syscall_stack_enter(ctx: TracePointContext) -> u32 {
    let config = config();
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if config.collect_user == 0 || !is_target(&config, tgid, tid) || !in_selected_cgroup(&config) {
        return 0;
    }
    let Some(entry) = SYSCALL_STACK_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's value, which only this program (never nested) uses.
    let entry = unsafe { &mut *entry };
    let (ip, sp, bp) = user_regs();
    if ip == 0 || sp == 0 {
        return 0;
    }
    // SAFETY: no preconditions.
    entry.time_ns = unsafe { bpf_ktime_get_ns() };
    (entry.ip, entry.sp, entry.bp) = (ip, sp, bp);
    if config.copy_user_stack == 0 {
        // `--unwind fp`: the addresses the kernel walks, as a sample would.
        const SIZE: u32 = (8 * MAX_STACK_DEPTH) as u32;
        const _: () = assert!(SIZE as usize <= SYSCALL_STACK_COPY);
        // SAFETY: the buffer is larger than `SIZE` bytes.
        let read = unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                entry.stack.as_mut_ptr().cast(),
                SIZE,
                BPF_F_USER_STACK as u64,
            )
        };
        if read <= 0 {
            return 0;
        }
        entry.len = read as u32 & !7;
        entry.frames = entry.len / 8;
    } else {
        // SAFETY: `stack` is `SYSCALL_STACK_COPY` bytes and a page of slack;
        // `read` is called only with `dst` valid for `len` bytes.
        entry.len = unsafe {
            copy_user_pages::<SYSCALL_STACK_COPY>(
                entry.stack.as_mut_ptr(),
                sp,
                config.stack_copy_bytes,
                |dst, len, src| read_user(dst, len, src),
            )
        };
        entry.frames = 0;
    }
    let _ = SYSCALL_STACKS.insert(&tid, entry, 0);
    0
}

/// Fills the user stack of sample `copy` (its registers already set) from
/// the entry its thread left as it entered `execve` or `exit`, if it is
/// still in that call: the same registers. The record then carries the
/// entry's time. Returns whether it did. With `--unwind fp` the entry holds
/// the walked addresses, and so does the sample.
#[inline(always)]
pub fn fill(copy: &mut StackCopy) -> bool {
    if !in_kept_call() {
        return false;
    }
    let header = &copy.header;
    // SAFETY: a lookup; the value stays valid while this program runs (RCU).
    let Some(entry) = (unsafe { SYSCALL_STACKS.get(&header.tid) }) else {
        return false;
    };
    if (entry.ip, entry.sp, entry.bp) != (header.ip, header.sp, header.bp) {
        return false;
    }
    let mut len = entry.len;
    if len as usize > SYSCALL_STACK_COPY {
        len = SYSCALL_STACK_COPY as u32;
    }
    const _: () = assert!(SYSCALL_STACK_COPY <= MAX_STACK_COPY);
    let dst: *mut c_void = copy.stack.as_mut_ptr().cast();
    // SAFETY: `len` bytes fit both buffers (clamped above, and the sample's is larger).
    let read = unsafe { bpf_probe_read_kernel_buf(dst, len, entry.stack.as_ptr().cast()) };
    if read != 0 {
        return false;
    }
    copy.header.stack_len = len;
    copy.header.user_frames = entry.frames;
    copy.header.time_ns = entry.time_ns;
    true
}

/// `bpf_probe_read_kernel` of `len` bytes.
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes.
#[inline(always)]
unsafe fn bpf_probe_read_kernel_buf(dst: *mut c_void, len: u32, src: *const c_void) -> i64 {
    // SAFETY: the caller's contract.
    unsafe { aya_ebpf::helpers::generated::bpf_probe_read_kernel(dst, len, src) }
}
