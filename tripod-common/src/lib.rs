//! Types and constants shared by the tripod eBPF program and its loader.
//!
//! Everything here crosses the kernel/user boundary through BPF maps or
//! global variables, so every type is `#[repr(C)]` plain data with no
//! implicit padding: the kernel writes the bytes and userspace reads them
//! back, and both sides must agree on every offset.
#![no_std]

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

/// The stack id stored in a [`SampleKey`] when that stack was not asked for
/// (`--user-only` or `--kernel-only`). Real failures store the negative errno
/// that `bpf_get_stackid` returned, which is always small.
pub const STACK_NOT_COLLECTED: i32 = i32::MIN;

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
}

impl SamplerConfig {
    /// A configuration that samples nothing; the loader fills it in.
    pub const EMPTY: Self = Self {
        all_processes: 0,
        include_idle: 0,
        self_tgid: 0,
        collect_user: 1,
        collect_kernel: 1,
    };
}

/// Index of the generation word in the `CONTROL` array.
///
/// Counts and stacks are double-buffered: the kernel writes into the maps of
/// the current generation while userspace drains and clears the other one, so
/// no sample is lost or double-counted between a read and a delete.
pub const CONTROL_GENERATION: u32 = 0;

/// Number of slots in the `CONTROL` array.
pub const CONTROL_LEN: u32 = 1;

/// Key of the count maps: one entry per distinct (thread, stacks) seen.
///
/// 40 bytes, no padding: four `u32`/`i32` fields then the 16-byte comm.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Id in the generation's stack map, or a negative errno from
    /// `bpf_get_stackid`, or [`STACK_NOT_COLLECTED`].
    pub user_stack_id: i32,
    /// Same as `user_stack_id`, for the kernel stack.
    pub kernel_stack_id: i32,
    /// The thread's name, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Reserved, zero. Keeps the size a multiple of 8 for the hash map.
    pub _reserved: [u32; 2],
}

/// Per-CPU counters, indices into the `COUNTERS` map.
///
/// Stack errors are split by errno the way `bpf_get_stackid` reports them:
/// `EFAULT` (no stack could be read, normal for the user stack of kernel
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
}

impl Counter {
    /// Number of counters, the size of the `COUNTERS` map.
    pub const LEN: u32 = 10;

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
    ];

    /// The counter for a failed `bpf_get_stackid` with this (negative) errno.
    pub const fn for_stack_error(kernel: bool, errno: i32) -> Counter {
        // Values from include/uapi/asm-generic/errno-base.h; the same on every architecture.
        const EFAULT: i32 = 14;
        const EEXIST: i32 = 17;
        const ENOMEM: i32 = 12;
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
    unsafe impl aya::Pod for super::SamplerConfig {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn wire_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<SampleKey>(), 4 * 4 + COMM_LEN + 8);
        assert_eq!(core::mem::size_of::<SamplerConfig>(), 5 * 4);
    }

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
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
