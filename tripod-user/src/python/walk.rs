//! A thread's Python frames read in userspace, as the eBPF program reads
//! them at sample time (`tripod-ebpf`'s `python.rs`): the same offsets, the
//! same limits, the same [`PythonFrame`]s. For memory that does not change
//! while it is read, a core file's, where no eBPF program runs.
use tripod_common::{
    PythonFrame, PythonProcess, PythonStatus, MAX_PYTHON_FRAMES, MAX_PYTHON_THREADS_SCANNED,
    NO_FIELD, PYTHON_FRAME_READ_MAX,
};

use super::{memory::Memory, PythonSample};

/// The Python frames, innermost first, of the thread whose thread state's
/// id field is `key` (its tid, or its `pthread_t` as
/// [`tripod_common::PythonOffsets::thread_match`] says).
pub fn thread_frames(memory: &dyn Memory, process: &PythonProcess, key: u64) -> PythonSample {
    let status = |status| PythonSample {
        status: Some(status),
        frames: Vec::new(),
    };
    match thread_state(memory, process, key) {
        Ok(Some(thread)) => walk_frames(memory, process, thread),
        Ok(None) => status(PythonStatus::NoThreadState),
        Err(()) => status(PythonStatus::Unreadable),
    }
}

/// The `u64` at `base + offset`; `Err` if unreadable, `base` null or the
/// field absent.
fn read_u64(memory: &dyn Memory, base: u64, offset: u32) -> Result<u64, ()> {
    if base == 0 || offset == NO_FIELD {
        return Err(());
    }
    memory
        .read_u64(base.wrapping_add(u64::from(offset)))
        .map_err(|_| ())
}

/// Walks every interpreter's thread states for the one whose id field is `key`.
fn thread_state(memory: &dyn Memory, process: &PythonProcess, key: u64) -> Result<Option<u64>, ()> {
    let offsets = &process.offsets;
    if key == 0 {
        return Ok(None);
    }
    let mut interpreter = read_u64(memory, process.runtime, offsets.runtime_interpreters_head)?;
    let mut scanned = 0;
    while interpreter != 0 {
        let mut thread = read_u64(memory, interpreter, offsets.interpreter_threads_head)?;
        while thread != 0 {
            scanned += 1;
            if scanned > MAX_PYTHON_THREADS_SCANNED {
                return Ok(None);
            }
            if read_u64(memory, thread, offsets.thread_native_id)? == key {
                return Ok(Some(thread));
            }
            thread = read_u64(memory, thread, offsets.thread_next)?;
        }
        interpreter = read_u64(memory, interpreter, offsets.interpreter_next)?;
    }
    Ok(None)
}

/// The frames of `thread_state`, innermost first, at most [`MAX_PYTHON_FRAMES`].
fn walk_frames(memory: &dyn Memory, process: &PythonProcess, thread_state: u64) -> PythonSample {
    let offsets = &process.offsets;
    let mut sample = PythonSample {
        status: Some(PythonStatus::Unreadable),
        frames: Vec::new(),
    };
    let Ok(mut frame) = read_u64(memory, thread_state, offsets.thread_frame) else {
        return sample;
    };
    if offsets.cframe_current_frame != NO_FIELD && frame != 0 {
        match read_u64(memory, frame, offsets.cframe_current_frame) {
            Ok(current) => frame = current,
            Err(()) => return sample,
        }
    }
    let size = offsets.frame_read_size.min(PYTHON_FRAME_READ_MAX - 1) as usize;
    let mut fields = vec![0u8; size];
    while frame != 0 && sample.frames.len() < MAX_PYTHON_FRAMES {
        let start = frame.wrapping_add(u64::from(offsets.frame_read_start));
        if memory.read(start, &mut fields).is_err() {
            return sample;
        }
        let code = field(&fields, offsets.frame_code) & !u64::from(offsets.code_tag_bits);
        sample.frames.push(PythonFrame {
            code,
            code_identity: code_identity(memory, offsets.code_names, code),
            instruction: field(&fields, offsets.frame_instruction),
            frame,
            is_entry: byte(&fields, offsets.frame_is_entry),
            owner: byte(&fields, offsets.frame_owner),
        });
        frame = field(&fields, offsets.frame_previous);
    }
    sample.status = Some(if frame == 0 {
        PythonStatus::Frames
    } else {
        PythonStatus::Truncated
    });
    sample
}

/// The two name pointers of the code object at `code`, mixed as the eBPF
/// program mixes them; 0 when they cannot be read.
fn code_identity(memory: &dyn Memory, names: u32, code: u64) -> u64 {
    let (Ok(file), Ok(name)) = (
        read_u64(memory, code, names),
        read_u64(memory, code, names.wrapping_add(8)),
    ) else {
        return 0;
    };
    file ^ name.rotate_left(29)
}

fn field(fields: &[u8], offset: u32) -> u64 {
    let at = offset as usize;
    fields
        .get(at..at + 8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn byte(fields: &[u8], offset: u32) -> u32 {
    fields.get(offset as usize).map_or(0, |&b| u32::from(b))
}
