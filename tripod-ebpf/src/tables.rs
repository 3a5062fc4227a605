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
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::generated::bpf_loop,
    macros::map,
    maps::{Array, HashMap},
};
use tripod_common::{
    cfa_rule, rbp_rule, walked_hash, walked_stack_id, Counter, StackCopy, UnwindMapping,
    UnwindProcess, UnwindRow, WalkedStack, MAX_STACK_COPY, MAX_TABLE_FRAMES, MAX_UNWIND_MAPPINGS,
    MAX_UNWIND_PROCESSES, WALKED_HASH_SEED,
};

use crate::{bump, read_user, SCRATCH};

/// Rows of every compiled file; the loader sizes it from `--unwind-table-size`.
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, 0);

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
    if UNWIND_PROCESSES.get_ptr(&tgid).is_none() {
        bump(Counter::TableNotCovered);
        return None;
    }
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
            Some(state.hash)
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
    let outcome = match step(process, state.tgid, &mut state.regs, index == 0) {
        Step::Caller => return 0,
        Step::End => OUTCOME_END,
        Step::NotCovered => OUTCOME_NOT_COVERED,
        Step::Failed => OUTCOME_FAILED,
    };
    state.frames = index + 1;
    state.outcome = outcome;
    1
}

/// Unwinds one frame: `regs` become the caller's.
#[inline(always)]
fn step(process: &UnwindProcess, tgid: u32, regs: &mut Regs, first: bool) -> Step {
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
    let Some(return_address) = read_u64(cfa.wrapping_sub(8)) else {
        return Step::Failed;
    };
    match row.rbp_rule {
        rbp_rule::RBP_SAME => {}
        rbp_rule::RBP_AT_CFA => match read_u64(cfa.wrapping_add(row.rbp_offset as i64 as u64)) {
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
