//! Python frames, read from the interpreter at sample time.
//!
//! For a thread of a process in `PYTHON_PROCESSES`, find its `PyThreadState`
//! (remembered per thread, else found by walking the interpreters' thread
//! lists), then follow the frame chain from the current frame outwards,
//! writing each frame's code object, instruction and address after the user
//! stack of the record. Names, files and lines are left to userspace, which
//! reads each code object once. Every field offset comes from the map value:
//! nothing here knows a CPython version.
use core::ffi::c_void;

use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, macros::map, maps::HashMap};
use tripod_common::{
    PythonFrame, PythonOffsets, PythonProcess, PythonStatus, PythonThread, StackCopy,
    MAX_PYTHON_FRAMES, MAX_PYTHON_PROCESSES, MAX_PYTHON_THREADS, MAX_PYTHON_THREADS_SCANNED,
    MAX_STACK_COPY, NO_FIELD, PYTHON_FRAME_READ_MAX, PYTHON_THREAD_MATCH_PTHREAD,
    PYTHON_THREAD_RECHECK_NS,
};

#[map]
static PYTHON_PROCESSES: HashMap<u32, PythonProcess> =
    HashMap::with_max_entries(MAX_PYTHON_PROCESSES, 0);

/// Not an LRU map: those take locks that a sample in NMI context (hardware
/// events) could re-enter on kernels without the fix. Userspace removes the
/// entries of threads that exited.
#[map]
static PYTHON_THREADS: HashMap<u32, PythonThread> =
    HashMap::with_max_entries(MAX_PYTHON_THREADS, 0);

/// The Python process `tgid`, if its frames are collected.
#[inline(always)]
pub fn process(tgid: u32) -> Option<PythonProcess> {
    // SAFETY: a live map value, copied out.
    PYTHON_PROCESSES.get_ptr(tgid).map(|p| unsafe { *p })
}

/// The thread a record's Python frames are collected for.
pub struct PythonThreadId {
    /// The kernel's thread id.
    pub tid: u32,
    /// Its `task_struct`.
    pub task: u64,
    /// Where `thread.fsbase` is in a `task_struct` (0: unknown).
    pub fsbase_offset: u32,
}

impl PythonThreadId {
    /// What the thread state's id field holds for this thread: its tid, or
    /// (3.6, 3.7) its `pthread_t`, the TLS base the kernel keeps for it.
    #[inline(always)]
    fn key(&self, offsets: &PythonOffsets) -> u64 {
        if offsets.thread_match != PYTHON_THREAD_MATCH_PTHREAD {
            return self.tid as u64;
        }
        crate::read_task_field::<u64>(self.task, self.fsbase_offset).unwrap_or(0)
    }
}

/// Appends the Python frames of `thread` of `process` to `copy`, after
/// its user stack, and sets the header's Python fields (left at "not Python"
/// by `begin_record` otherwise). `read` reads the process's memory:
/// `read(destination, length, source)`, 0 on success. Every call here
/// passes a `destination` valid for writes of `length` bytes (a local
/// buffer of that size), which is what the `read` closures of `main.rs`
/// require of their callers.
#[inline(always)]
pub fn collect(
    copy: &mut StackCopy,
    process: &PythonProcess,
    thread: &PythonThreadId,
    read: impl Fn(*mut c_void, u32, *const c_void) -> i64,
) {
    let key = thread.key(&process.offsets);
    let status = match thread_state(process, thread.tid, key, &read) {
        Lookup::Found(thread_state) => walk_frames(copy, &process.offsets, thread_state, &read),
        Lookup::Missing => PythonStatus::NoThreadState,
        Lookup::Unreadable => PythonStatus::Unreadable,
    };
    copy.header.python_status = status as u32;
}

enum Lookup {
    Found(u64),
    Missing,
    Unreadable,
}

/// The `PyThreadState` of `tid`, whose id field holds `key`: the
/// remembered one if it still belongs to it, else one found by walking the
/// thread lists (and remembered).
#[inline(always)]
fn thread_state(
    process: &PythonProcess,
    tid: u32,
    key: u64,
    read: &impl Fn(*mut c_void, u32, *const c_void) -> i64,
) -> Lookup {
    let offsets = &process.offsets;
    if key == 0 {
        return Lookup::Missing;
    }
    if let Some(known) = PYTHON_THREADS.get_ptr(tid) {
        // SAFETY: a live map value, copied out.
        let known = unsafe { *known };
        if known.thread_state == 0 {
            // SAFETY: no preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            if now.wrapping_sub(known.checked_ns) < PYTHON_THREAD_RECHECK_NS {
                return Lookup::Missing;
            }
        } else if read_u64(read, known.thread_state, offsets.thread_native_id) == Some(key) {
            return Lookup::Found(known.thread_state);
        }
    }
    let found = scan_threads(process, key, read);
    let thread_state = match found {
        Lookup::Found(thread_state) => thread_state,
        // Unreadable memory is not remembered: the next sample tries again.
        Lookup::Unreadable => return found,
        Lookup::Missing => 0,
    };
    let remembered = PythonThread {
        thread_state,
        // SAFETY: no preconditions.
        checked_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = PYTHON_THREADS.insert(tid, remembered, 0);
    found
}

/// Walks every interpreter's thread states for the one whose id field is `key`.
#[inline(always)]
fn scan_threads(
    process: &PythonProcess,
    key: u64,
    read: &impl Fn(*mut c_void, u32, *const c_void) -> i64,
) -> Lookup {
    let offsets = &process.offsets;
    let Some(mut interpreter) = read_u64(read, process.runtime, offsets.runtime_interpreters_head)
    else {
        return Lookup::Unreadable;
    };
    let mut thread = 0;
    let mut started = false;
    for _ in 0..MAX_PYTHON_THREADS_SCANNED {
        if thread == 0 {
            // The next interpreter's first thread (the first interpreter's, at first).
            if started {
                match read_u64(read, interpreter, offsets.interpreter_next) {
                    Some(next) => interpreter = next,
                    None => return Lookup::Unreadable,
                }
            }
            started = true;
            if interpreter == 0 {
                return Lookup::Missing;
            }
            match read_u64(read, interpreter, offsets.interpreter_threads_head) {
                Some(first) => thread = first,
                None => return Lookup::Unreadable,
            }
            continue;
        }
        if read_u64(read, thread, offsets.thread_native_id) == Some(key) {
            return Lookup::Found(thread);
        }
        match read_u64(read, thread, offsets.thread_next) {
            Some(next) => thread = next,
            None => return Lookup::Unreadable,
        }
    }
    Lookup::Missing
}

/// Writes the frames of `thread_state`, innermost first, after the user stack.
#[inline(always)]
fn walk_frames(
    copy: &mut StackCopy,
    offsets: &PythonOffsets,
    thread_state: u64,
    read: &impl Fn(*mut c_void, u32, *const c_void) -> i64,
) -> PythonStatus {
    let Some(mut frame) = read_u64(read, thread_state, offsets.thread_frame) else {
        return PythonStatus::Unreadable;
    };
    if offsets.cframe_current_frame != NO_FIELD && frame != 0 {
        match read_u64(read, frame, offsets.cframe_current_frame) {
            Some(current) => frame = current,
            None => return PythonStatus::Unreadable,
        }
    }
    // Masked rather than compared: a comparison's bound can be lost on the
    // way to the call, a masked value carries its own. The loader checks
    // that the size fits, so the mask changes nothing.
    let size = offsets.frame_read_size & (PYTHON_FRAME_READ_MAX - 1);
    if size == 0 {
        return PythonStatus::Unreadable;
    }
    let start = StackCopy::python_offset(copy.header.stack_len);
    if start > MAX_STACK_COPY {
        return PythonStatus::Unreadable;
    }
    // One read per frame: its first `size` bytes, fields picked out below.
    let mut fields = [0u64; (PYTHON_FRAME_READ_MAX / 8) as usize];
    let mut count: u32 = 0;
    for i in 0..MAX_PYTHON_FRAMES {
        if frame == 0 {
            break;
        }
        let source = frame.wrapping_add(offsets.frame_read_start as u64) as *const c_void;
        if read(fields.as_mut_ptr().cast(), size, source) != 0 {
            copy.header.python_frames = count;
            return PythonStatus::Unreadable;
        }
        let code = field(&fields, offsets.frame_code) & !(offsets.code_tag_bits as u64);
        let entry = PythonFrame {
            code,
            code_identity: code_identity(read, offsets, code),
            instruction: field(&fields, offsets.frame_instruction),
            frame,
            is_entry: byte(&fields, offsets.frame_is_entry),
            owner: byte(&fields, offsets.frame_owner),
        };
        // `start <= MAX_STACK_COPY` and `i < MAX_PYTHON_FRAMES`: inside the
        // slack page after the stack (see `StackCopy::python_offset`).
        let at = start + i * core::mem::size_of::<PythonFrame>();
        // SAFETY: `at + size_of::<PythonFrame>()` is within `copy.stack` (see above).
        unsafe {
            let slot = copy.stack.as_mut_ptr().add(at).cast::<PythonFrame>();
            core::ptr::write_unaligned(slot, entry);
        }
        count += 1;
        frame = field(&fields, offsets.frame_previous);
    }
    copy.header.python_frames = count;
    if frame != 0 {
        PythonStatus::Truncated
    } else {
        PythonStatus::Frames
    }
}

/// The two name pointers of the code object at `code`, mixed into one word
/// (see [`PythonFrame::code_identity`]); 0 when they cannot be read.
///
/// Without a branch: a failed read leaves the buffer zeroed (every read
/// helper clears it), and a null `code` or a [`NO_FIELD`] offset is an
/// address that fails. Branches here, once per frame, multiplied the paths
/// the verifier explores in the task iterator past its limit.
#[inline(always)]
fn code_identity(
    read: &impl Fn(*mut c_void, u32, *const c_void) -> i64,
    offsets: &PythonOffsets,
    code: u64,
) -> u64 {
    let mut names = [0u64; 2];
    let source = code.wrapping_add(offsets.code_names as u64) as *const c_void;
    let _ = read(names.as_mut_ptr().cast(), 16, source);
    names[0] ^ names[1].rotate_left(29)
}

/// The 8-byte field at `offset` of a frame read into `fields` (offsets of
/// pointer fields are multiples of 8).
#[inline(always)]
fn field(fields: &[u64; (PYTHON_FRAME_READ_MAX / 8) as usize], offset: u32) -> u64 {
    if offset == NO_FIELD {
        return 0;
    }
    fields[((offset >> 3) & (PYTHON_FRAME_READ_MAX / 8 - 1)) as usize]
}

/// The byte at `offset` of a frame read into `fields`.
#[inline(always)]
fn byte(fields: &[u64; (PYTHON_FRAME_READ_MAX / 8) as usize], offset: u32) -> u32 {
    if offset == NO_FIELD {
        return 0;
    }
    let word = fields[((offset >> 3) & (PYTHON_FRAME_READ_MAX / 8 - 1)) as usize];
    ((word >> ((offset & 7) * 8)) & 0xff) as u32
}

/// Reads the `u64` at `base + offset` with `read`; `None` if it faults or
/// `base` is null.
#[inline(always)]
fn read_u64(
    read: &impl Fn(*mut c_void, u32, *const c_void) -> i64,
    base: u64,
    offset: u32,
) -> Option<u64> {
    if base == 0 || offset == NO_FIELD {
        return None;
    }
    let mut value: u64 = 0;
    let source = base.wrapping_add(offset as u64) as *const c_void;
    if read((&mut value as *mut u64).cast(), 8, source) == 0 {
        Some(value)
    } else {
        None
    }
}
