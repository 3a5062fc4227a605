//! `--unwind tables`: the user stack walked in the kernel with rows that
//! userspace compiled from each file's call frame information (see
//! `tripod_common::UnwindRow`), so a sample sends its return addresses
//! instead of a copy of its stack.
//!
//! Each frame costs a binary search of the process's mappings, one of its
//! file's rows and two or three reads of user memory. A frame the rows do
//! not cover, or a walk that fails, makes the caller copy the stack as in
//! `--unwind dwarf`: the walk never guesses.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::generated::{bpf_loop, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap},
};
use tripod_common::{
    cfa_rule, rbp_rule, walked_hash, walked_stack_id, Counter, StackCopy, StackCopyHeader,
    UnwindMapping, UnwindProcess, UnwindRow, WalkedStack, MAX_STACK_COPY, MAX_TABLE_FRAMES,
    MAX_UNWIND_MAPPINGS, MAX_UNWIND_PROCESSES, WALKED_HASH_SEED,
};

use crate::{bump, read_user, SCRATCH};

/// Rows of every compiled file; the loader sizes it from `--unwind-table-size`.
/// Mappable, so that userspace writes a file's rows with one copy.
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Each process's executable mappings with rows, by tgid. Not preallocated:
/// entries are 4 KiB and most runs have few processes.
#[map]
static UNWIND_PROCESSES: HashMap<u32, UnwindProcess> =
    HashMap::with_max_entries(MAX_UNWIND_PROCESSES, BPF_F_NO_PREALLOC);

// Walked user stacks of each generation, named by the count keys as
// `STACKS_x` is for frame pointers (see `tripod_common::WalkedStack`).
// Not preallocated: values are 776 bytes, and the loader sizes the maps
// from `--stack-storage-size` only in this mode (1 entry otherwise).
#[map]
pub(crate) static WALKED_0: HashMap<u32, WalkedStack> =
    HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);
#[map]
pub(crate) static WALKED_1: HashMap<u32, WalkedStack> =
    HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Each thread's last walks at context switches, by tid (see
/// [`ThreadMemos`]); removed when the thread exits. Not preallocated
/// (entries are 2,664 bytes and only threads that block have one), and not
/// LRU: an LRU map reuses an evicted entry at once, under a reader that may
/// still be comparing it. When full, walks of threads without an entry are
/// not remembered.
#[map]
static WALK_MEMOS: HashMap<u32, ThreadMemos> =
    HashMap::with_max_entries(MAX_WALK_MEMOS, BPF_F_NO_PREALLOC);

/// Most threads whose last walks are remembered.
const MAX_WALK_MEMOS: u32 = 4096;

/// Walks remembered per thread.
const MEMO_WAYS: usize = 2;

/// A thread's last [`MEMO_WAYS`] walks: a thread often blocks at two places
/// by turns (reading, and preempted as it writes, in a ping-pong).
/// Assembled, when the thread has none yet, where the walk writes: way 0
/// is the walk just made.
#[repr(C)]
struct ThreadMemos {
    ways: [WalkMemo; MEMO_WAYS],
    /// The way the next walk replaces: the older one.
    next: u32,
    _reserved: u32,
}

/// Most frames of a walk that is remembered; deeper walks are walked each time.
const MEMO_FRAMES: usize = 32;
/// Most words of user memory a remembered walk may have read.
const MEMO_READS: usize = 32;

/// A word of user memory a walk read, and what it held.
#[repr(C)]
#[derive(Clone, Copy)]
struct MemoRead {
    address: u64,
    value: u64,
}

/// A thread's last walk, enough to tell whether walking again would give
/// the same stack without walking: a walk is a function of the registers
/// it starts from, the rows (named by the process's mappings `version`)
/// and the words of user memory it read. When all of these are the same,
/// so is the walked stack.
///
/// Assembled where the walk writes, at the start of a `StackCopy`'s stack
/// area (`frames` first and as long as a walk can be, so that the reads
/// noted after them are never overwritten by frames), and stored from
/// there without a copy. Only the first [`MEMO_FRAMES`] frames are used.
#[repr(C)]
struct WalkMemo {
    frames: [u64; MAX_TABLE_FRAMES],
    ip: u64,
    sp: u64,
    bp: u64,
    /// [`walked_hash`] of the frames.
    hash: u64,
    tgid: u32,
    /// The `UnwindProcess::version` the rows were looked up in.
    version: u32,
    frames_len: u32,
    reads_len: u32,
    reads: [MemoRead; MEMO_READS],
}

/// Steps of the binary search of a file's rows: log2 of `MAX_UNWIND_FILE_ROWS`, plus one.
const ROW_STEPS: u32 = 22;

/// The registers a frame is unwound from.
struct Regs {
    ip: u64,
    sp: u64,
    bp: u64,
    /// Whether `bp` is the caller's real rbp (a frame saved it somewhere
    /// the rows cannot say).
    bp_known: bool,
}

/// How one step of the walk ended.
enum Step {
    /// On to the caller.
    Caller,
    /// The outermost frame was reached.
    End,
    /// No rows for this address: the stack must be copied.
    NotCovered,
    /// A read failed or a rule cannot be followed: the stack must be copied.
    Failed,
}

/// What the walk's loop body reads and writes between iterations; it lives
/// on the caller's stack (`bpf_loop` hands the body a pointer to it).
struct WalkState {
    regs: Regs,
    tgid: u32,
    /// The `SCRATCH` slot whose stack area receives the addresses.
    slot: u32,
    /// Addresses written when the walk ended.
    frames: u32,
    /// [`walked_hash`] of the addresses written so far.
    hash: u64,
    /// How it ended: `Step::End` as 1, not covered 2, failed 3 (the
    /// initial value: a walk that runs out of iterations was too deep).
    outcome: u32,
}

const OUTCOME_END: u32 = 1;
const OUTCOME_NOT_COVERED: u32 = 2;
const OUTCOME_FAILED: u32 = 3;

/// Walks the user stack from the registers in `copy`'s header (the record
/// in `SCRATCH` slot `slot`), writing the instruction pointer then each
/// return address into its stack area. Returns the [`walked_hash`] of the
/// addresses if the walk reached the outermost frame; when it did not, the
/// reason is counted and the caller copies the stack instead.
///
/// The frames are a `bpf_loop`: the verifier checks the body once, not
/// once per frame (a plain loop of binary searches exceeds its budget).
#[inline(always)]
pub fn walk(copy: &mut StackCopy, slot: u32, tgid: u32) -> Option<u64> {
    walk_noting(copy, slot, tgid).map(|(hash, _)| hash)
}

/// [`walk`], also saying how many words of user memory it read.
#[inline(always)]
fn walk_noting(copy: &mut StackCopy, slot: u32, tgid: u32) -> Option<(u64, u32)> {
    if UNWIND_PROCESSES.get_ptr(&tgid).is_none() {
        bump(Counter::TableNotCovered);
        return None;
    }
    // The loop body counts its reads in the slot through its own lookup
    // of the map, which the compiler cannot see: through `copy` (a `&mut`,
    // which nothing else may change as far as it knows) the count would
    // read back as the 0 stored here. Volatile both ways, it is the slot's.
    let reads_len: *mut u32 = &mut memo_in(copy).reads_len;
    // SAFETY: a field of the slot, valid for this program run.
    unsafe { reads_len.write_volatile(0) };
    let mut state = WalkState {
        regs: Regs {
            ip: copy.header.ip,
            sp: copy.header.sp,
            bp: copy.header.bp,
            bp_known: true,
        },
        tgid,
        slot,
        frames: 0,
        hash: WALKED_HASH_SEED,
        outcome: OUTCOME_FAILED,
    };
    // SAFETY: `walk_frame` has the callback's signature and `state`
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_TABLE_FRAMES as u32,
            walk_frame as *mut c_void,
            (&mut state as *mut WalkState).cast(),
            0,
        )
    };
    match state.outcome {
        OUTCOME_END => {
            copy.header.user_frames = state.frames;
            copy.header.stack_len = state.frames * 8;
            // SAFETY: as above.
            Some((state.hash, unsafe { reads_len.read_volatile() }))
        }
        OUTCOME_NOT_COVERED => {
            bump(Counter::TableNotCovered);
            None
        }
        _ => {
            bump(Counter::TableWalkFailed);
            None
        }
    }
}

/// One frame of [`walk`]: 0 to go on, 1 to stop (the outcome is set).
#[inline(never)]
extern "C" fn walk_frame(index: u32, context: *mut c_void) -> i64 {
    // SAFETY: `walk` passes its `WalkState`.
    let state = unsafe { &mut *context.cast::<WalkState>() };
    let (Some(process), Some(copy)) = (
        // SAFETY: read in place during this program run only.
        unsafe { UNWIND_PROCESSES.get(&state.tgid) },
        SCRATCH.get_ptr_mut(state.slot),
    ) else {
        state.outcome = OUTCOME_NOT_COVERED;
        return 1;
    };
    let depth = index as usize & (MAX_STACK_COPY / 8 - 1);
    // SAFETY: a slot this program owns (see `ScratchSlot`); `depth` is
    // masked to the stack area's u64s.
    unsafe {
        let frames = (*copy).stack.as_mut_ptr().cast::<u64>();
        frames.add(depth).write_unaligned(state.regs.ip);
    }
    state.hash = walked_hash(state.hash, state.regs.ip);
    // SAFETY: a slot this program owns (see `ScratchSlot`).
    let memory = Memory {
        memo: memo_in(unsafe { &mut *copy }),
    };
    let outcome = match step(process, state.tgid, &mut state.regs, index == 0, memory) {
        Step::Caller => return 0,
        Step::End => OUTCOME_END,
        Step::NotCovered => OUTCOME_NOT_COVERED,
        Step::Failed => OUTCOME_FAILED,
    };
    state.frames = index + 1;
    state.outcome = outcome;
    1
}

/// The [`WalkMemo`] at the start of a record's stack area, where the walk
/// writes its frames and notes its reads.
#[inline(always)]
fn memo_in(copy: &mut StackCopy) -> &mut WalkMemo {
    // SAFETY: the stack area is 8-byte aligned (`StackCopy::STACK_OFFSET` in
    // an 8-byte aligned map value) and far larger than a `WalkMemo`; any bit
    // pattern is a valid one.
    unsafe { &mut *copy.stack.as_mut_ptr().cast::<WalkMemo>() }
}

/// User memory as a walk reads it: each word read is noted in `memo`.
/// The count of reads lives there too, in map memory, not in the loop's
/// state: the verifier does not track values in map memory, so the
/// iterations of the loop stay alike and it checks only a few.
struct Memory<'a> {
    memo: &'a mut WalkMemo,
}

impl Memory<'_> {
    /// Eight bytes of the current process's memory at `address`, noted.
    #[inline(always)]
    fn read(&mut self, address: u64) -> Option<u64> {
        let value = read_u64(address)?;
        let index = self.memo.reads_len;
        if (index as usize) < MEMO_READS {
            let read = MemoRead { address, value };
            self.memo.reads[index as usize & (MEMO_READS - 1)] = read;
        }
        self.memo.reads_len = index.saturating_add(1);
        Some(value)
    }
}

/// Unwinds one frame: `regs` become the caller's.
#[inline(always)]
fn step(
    process: &UnwindProcess,
    tgid: u32,
    regs: &mut Regs,
    first: bool,
    mut memory: Memory,
) -> Step {
    // A return address is looked up one byte back, inside the call: the
    // call may be the last instruction of its function.
    let lookup = if first {
        regs.ip
    } else {
        regs.ip.wrapping_sub(1)
    };
    let Some(mapping) = find_mapping(process, tgid, lookup) else {
        return Step::NotCovered;
    };
    let Some(row) = find_row(mapping, lookup.wrapping_sub(mapping.bias)) else {
        return Step::NotCovered;
    };
    let cfa = match row.cfa_rule {
        cfa_rule::CFA_RSP => regs.sp.wrapping_add(row.cfa_offset as i64 as u64),
        cfa_rule::CFA_RBP if regs.bp_known => regs.bp.wrapping_add(row.cfa_offset as i64 as u64),
        // The offset holds the entry's threshold (11, or 10 in some linkers' PLTs).
        cfa_rule::CFA_PLT => {
            let pushed = regs.ip & 15 >= row.cfa_offset as u64;
            regs.sp.wrapping_add(if pushed { 16 } else { 8 })
        }
        cfa_rule::CFA_END => return Step::End,
        cfa_rule::CFA_NONE => return Step::NotCovered,
        _ => return Step::Failed,
    };
    let Some(return_address) = memory.read(cfa.wrapping_sub(8)) else {
        return Step::Failed;
    };
    match row.rbp_rule {
        rbp_rule::RBP_SAME => {}
        rbp_rule::RBP_AT_CFA => match memory.read(cfa.wrapping_add(row.rbp_offset as i64 as u64)) {
            Some(bp) => regs.bp = bp,
            None => return Step::Failed,
        },
        _ => regs.bp_known = false,
    }
    // Thread roots and `_start` end with a zero return address when their
    // rows do not say they are the last frame.
    if return_address == 0 {
        return Step::End;
    }
    regs.ip = return_address;
    regs.sp = cfa;
    Step::Caller
}

/// [`walk`] at a context switch of thread `tid`. A thread that blocks again
/// where it blocked before has the same stack: its previous walk is reused
/// when it started from the same registers in the same mappings and every
/// word of user memory it read still holds what it held (walking again
/// would then give the same stack). Otherwise the stack is walked, and
/// remembered if it is short enough. Never a stale stack: any difference
/// walks.
#[inline(always)]
pub fn walk_remembered(copy: &mut StackCopy, slot: u32, tgid: u32, tid: u32) -> Option<u64> {
    // SAFETY: read in place during this program run only.
    let Some(version) = (unsafe { UNWIND_PROCESSES.get(&tgid) }).map(|p| p.version) else {
        return walk(copy, slot, tgid);
    };
    // SAFETY: only this thread's switches read or write its entry, one at
    // a time, and entries are freed after the readers of the moment.
    if let Some(memos) = unsafe { WALK_MEMOS.get(tid) } {
        for memo in &memos.ways {
            if still_valid(memo, &copy.header, tgid, version) {
                reuse(memo, copy);
                bump(Counter::TableMemoHit);
                return Some(memo.hash);
            }
        }
    }
    let (hash, reads) = walk_noting(copy, slot, tgid)?;
    bump(Counter::TableMemoMiss);
    remember(copy, (tgid, tid), version, (hash, reads));
    Some(hash)
}

/// Whether `memo` is the walk of a thread now at `header`'s registers:
/// same process, mappings and registers, and each word it read unchanged.
#[inline(always)]
fn still_valid(memo: &WalkMemo, header: &StackCopyHeader, tgid: u32, version: u32) -> bool {
    let same_start = memo.tgid == tgid
        && memo.version == version
        && memo.ip == header.ip
        && memo.sp == header.sp
        && memo.bp == header.bp;
    let len = memo.reads_len;
    if !same_start
        || len as usize > MEMO_READS
        || memo.frames_len == 0
        || memo.frames_len as usize > MEMO_FRAMES
    {
        return false;
    }
    let mut index = 0;
    while index < MEMO_READS {
        if index as u32 >= len {
            return true;
        }
        let read = memo.reads[index];
        if read_u64(read.address) != Some(read.value) {
            return false;
        }
        index += 1;
    }
    true
}

/// Writes a remembered walk into `copy` as [`walk`] would have.
#[inline(always)]
fn reuse(memo: &WalkMemo, copy: &mut StackCopy) {
    // SAFETY: the stack area is 8-byte aligned and far larger than the frames.
    unsafe {
        copy.stack
            .as_mut_ptr()
            .cast::<[u64; MEMO_FRAMES]>()
            .write(*memo.frames.as_ptr().cast::<[u64; MEMO_FRAMES]>())
    };
    copy.header.user_frames = memo.frames_len;
    copy.header.stack_len = memo.frames_len * 8;
}

/// Stores the walk just made into `copy` as one of thread `tid`'s memos
/// (in place of the older one), if it is short enough. `walked` is its hash
/// and the number of words it read.
#[inline(always)]
fn remember(copy: &mut StackCopy, (tgid, tid): (u32, u32), version: u32, walked: (u64, u32)) {
    let (hash, reads) = walked;
    let frames = copy.header.user_frames;
    if reads as usize > MEMO_READS || frames == 0 || frames as usize > MEMO_FRAMES {
        // The memos the thread has stay: they did not match, and may again.
        return;
    }
    let (ip, sp, bp) = (copy.header.ip, copy.header.sp, copy.header.bp);
    // Its frames and reads are where the walk wrote them.
    let memo = memo_in(copy);
    memo.ip = ip;
    memo.sp = sp;
    memo.bp = bp;
    memo.hash = hash;
    memo.tgid = tgid;
    memo.version = version;
    memo.frames_len = frames;
    memo.reads_len = reads;
    if let Some(memos) = WALK_MEMOS.get_ptr_mut(tid) {
        // SAFETY: a live map value only this thread's switches use; the
        // way is masked below `MEMO_WAYS`. A failed copy leaves zeros: a
        // way with no frames, never valid.
        unsafe {
            let way = (*memos).next as usize & (MEMO_WAYS - 1);
            bpf_probe_read_kernel(
                (*memos).ways.as_mut_ptr().add(way).cast(),
                core::mem::size_of::<WalkMemo>() as u32,
                (memo as *const WalkMemo).cast(),
            );
            (*memos).next = (way as u32 + 1) & (MEMO_WAYS as u32 - 1);
        }
        return;
    }
    // SAFETY: the stack area is 8-byte aligned and far larger than a
    // `ThreadMemos`, whose way 0 is the walk just made.
    let memos = unsafe { &mut *copy.stack.as_mut_ptr().cast::<ThreadMemos>() };
    // The other way holds whatever the slot held before: no walk.
    memos.ways[1].frames_len = 0;
    memos.next = 1;
    // A full map leaves the thread without memos: it is walked each time.
    let _ = WALK_MEMOS.insert(tid, &*memos, 0);
}

/// Forgets the last walks of thread `tid`, which is exiting.
#[inline(always)]
pub fn forget(tid: u32) {
    let _ = WALK_MEMOS.remove(tid);
}

/// A binary search in progress: the last entry at or below `target` is in
/// `low..high`. Kept on the stack and stepped by `bpf_loop`, so the
/// verifier checks one step, not every path through all of them.
struct Search {
    target: u64,
    low: u32,
    high: u32,
    /// Where the entries are: a process's tgid, or a file's first row.
    base: u32,
}

/// Searches with `step` (a `bpf_loop` callback over a [`Search`]) for the
/// last entry at or below `target` among `len` entries; its index.
#[inline(always)]
fn search(step: extern "C" fn(u32, *mut c_void) -> i64, base: u32, len: u32, target: u64) -> u32 {
    let mut state = Search {
        target,
        low: 0,
        high: len,
        base,
    };
    // SAFETY: `step` has the callback's signature and `state` outlives the call.
    unsafe {
        bpf_loop(
            ROW_STEPS,
            step as *mut c_void,
            (&mut state as *mut Search).cast(),
            0,
        )
    };
    state.low
}

/// Halves a search of a process's mappings (`base` is its tgid).
#[inline(never)]
extern "C" fn mapping_step(_: u32, context: *mut c_void) -> i64 {
    // SAFETY: `search` passes its `Search`.
    let state = unsafe { &mut *context.cast::<Search>() };
    if state.high.wrapping_sub(state.low) <= 1 {
        return 1;
    }
    let mid = state.low + (state.high - state.low) / 2;
    // SAFETY: read in place during this program run only.
    let Some(process) = (unsafe { UNWIND_PROCESSES.get(&state.base) }) else {
        return 1;
    };
    let Some(mapping) = process
        .mappings
        .get(mid as usize & (MAX_UNWIND_MAPPINGS - 1))
    else {
        return 1;
    };
    if mapping.start <= state.target {
        state.low = mid;
    } else {
        state.high = mid;
    }
    0
}

/// Halves a search of a file's rows (`base` is its first row).
#[inline(never)]
extern "C" fn row_step(_: u32, context: *mut c_void) -> i64 {
    // SAFETY: `search` passes its `Search`.
    let state = unsafe { &mut *context.cast::<Search>() };
    if state.high.wrapping_sub(state.low) <= 1 {
        return 1;
    }
    let mid = state.low + (state.high - state.low) / 2;
    let Some(row) = UNWIND_ROWS.get(state.base.wrapping_add(mid)) else {
        return 1;
    };
    if row.pc <= state.target {
        state.low = mid;
    } else {
        state.high = mid;
    }
    0
}

/// The mapping holding `address`, if it has rows.
#[inline(always)]
fn find_mapping(process: &UnwindProcess, tgid: u32, address: u64) -> Option<&UnwindMapping> {
    let len = process.len;
    if len == 0 || len as usize > MAX_UNWIND_MAPPINGS {
        return None;
    }
    let index = search(mapping_step, tgid, len, address);
    let mapping = process
        .mappings
        .get(index as usize & (MAX_UNWIND_MAPPINGS - 1))?;
    (mapping.start <= address && address < mapping.end).then_some(mapping)
}

/// The row of `mapping`'s file for `pc` (an address as the file states it).
#[inline(always)]
fn find_row(mapping: &UnwindMapping, pc: u64) -> Option<UnwindRow> {
    if mapping.rows_len == 0 {
        return None;
    }
    let index = search(row_step, mapping.rows_start, mapping.rows_len, pc);
    let row = *UNWIND_ROWS.get(mapping.rows_start.wrapping_add(index))?;
    (row.pc <= pc).then_some(row)
}

/// Eight bytes of the current process's memory at `address`.
#[inline(always)]
fn read_u64(address: u64) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: `value` is 8 writable bytes.
    let read = unsafe {
        read_user(
            (&mut value as *mut u64).cast::<c_void>(),
            8,
            address as *const c_void,
        )
    };
    (read == 0).then_some(value)
}

/// Stores the stack [`walk`] just wrote into `copy` (its [`walked_hash`] is
/// `hash`) in `walked`, unless it is there already; the id a count key
/// names it by. `None` when it cannot be stored: the map is full, or the id
/// already holds other frames (a collision). The caller then sends the
/// record through the ring buffer: a stack is never counted under another
/// one's frames.
#[inline(always)]
pub fn store(walked: &HashMap<u32, WalkedStack>, copy: &mut StackCopy, hash: u64) -> Option<u32> {
    let len = copy.header.user_frames;
    if len == 0 || len as usize > MAX_TABLE_FRAMES {
        return None;
    }
    // SAFETY: the stack area starts 8-byte aligned (`StackCopy::STACK_OFFSET`
    // in an 8-byte aligned map value) and is far larger than a `WalkedStack`,
    // whose frames are where `walk` wrote them.
    let stack = unsafe { &mut *copy.stack.as_mut_ptr().cast::<WalkedStack>() };
    stack.len = len as u64;
    let id = walked_stack_id(hash);
    // One comparison site: each is a loop the verifier walks through.
    let stored = match walked.get_ptr(id) {
        Some(stored) => stored,
        None => {
            if walked.insert(id, &*stack, BPF_NOEXIST as u64).is_ok() {
                return Some(id);
            }
            // Another CPU stored this id at the same moment, or the map is full.
            walked.get_ptr(id)?
        }
    };
    // SAFETY: a live map value, read during this program run only.
    same_frames(unsafe { &*stored }, stack).then_some(id)
}

/// Whether two walked stacks hold the same addresses.
#[inline(always)]
fn same_frames(stored: &WalkedStack, new: &WalkedStack) -> bool {
    if stored.len != new.len {
        return false;
    }
    let mut index = 0;
    while index < MAX_TABLE_FRAMES {
        if index as u64 >= new.len {
            return true;
        }
        if stored.frames[index] != new.frames[index] {
            return false;
        }
        index += 1;
    }
    true
}
