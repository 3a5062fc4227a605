//! The user stack of a thread as it enters `execve` or `exit`, kept for the
//! samples taken while it is in there.
//!
//! Both system calls take the process's memory away before they return:
//! `execve` switches to the new program's (empty) address space well before
//! it starts the new program, and `exit` drops the address space before the
//! thread is gone. A sample taken after that still has the user registers
//! of the call (they change only when the new program starts), but no stack
//! to copy, so it showed `[truncated]` and, after the exec, an `[unknown]`
//! address of the old program: about 15% of the samples of a millisecond
//! process. The user part of a stack cannot change while its thread is in a
//! system call, so the stack copied at the call's entry is the one every
//! sample inside it has. It is located in the mappings in force at that
//! entry, which is why a sample that uses it carries the entry's time.

/// Names of the map and program, so both sides spell them the same.
pub mod names {
    /// tid -> [`super::SyscallStack`], an LRU map.
    pub const SYSCALL_STACKS: &str = "SYSCALL_STACKS";
    /// The tracepoint program on the entries of `execve`, `execveat`, `exit`
    /// and `exit_group` (see [`super::SYSCALL_TRACEPOINTS`]).
    pub const SYSCALL_STACK_PROGRAM: &str = "syscall_stack_enter";
}

/// The `syscalls` tracepoints the program is attached to.
pub const SYSCALL_TRACEPOINTS: [&str; 4] = [
    "sys_enter_execve",
    "sys_enter_execveat",
    "sys_enter_exit",
    "sys_enter_exit_group",
];

/// The x86_64 numbers of those calls, as a sample finds them in the user
/// registers (`orig_ax`): only samples in one of them look for an entry.
pub const SYSCALL_NUMBERS: [u64; 4] = [59, 322, 60, 231];

/// Bytes of stack kept per thread: the default copy of a sample
/// (`DEFAULT_STACK_COPY`). A larger `--stack-copy-bytes` is cut to this here:
/// the value must fit a per-CPU map (32 KiB) where it is assembled.
pub const SYSCALL_STACK_COPY: usize = 16 * 1024;

/// Threads whose entry stacks are kept at once; the least recently written
/// goes first (an LRU map: entries are never deleted, a stale one is never
/// used, see [`SyscallStack`]). 256 × 20 KiB is 5 MiB of kernel memory.
pub const MAX_SYSCALL_STACKS: u32 = 256;

/// A thread's user registers and the top of its user stack at the entry of
/// `execve` or `exit`. A sample of that thread uses it instead of copying
/// the stack only when its user registers are these very `ip`, `sp` and
/// `bp`: the thread is still in that call (a new program has other
/// registers, and another call from the same place would have written a new
/// entry), so an entry left behind by a thread long gone is never used.
///
/// 4 × u64, 2 × u32, then the bytes: no padding.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallStack {
    /// `bpf_ktime_get_ns` at the entry: the mappings in force then locate the stack.
    pub time_ns: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Bytes of `stack` in use.
    pub len: u32,
    /// Non-zero (`--unwind fp`): `stack` holds this many user addresses,
    /// innermost first, walked with frame pointers by the kernel; else the
    /// bytes copied from `sp` upwards.
    pub frames: u32,
    /// The stack bytes or addresses; the extra page lets the verifier prove
    /// that a page-sized read at any offset below [`SYSCALL_STACK_COPY`] stays inside.
    pub stack: [u8; SYSCALL_STACK_COPY + 4096],
}
