//! Where CPython keeps what we read, per supported version: the offsets
//! the eBPF program walks frames with, and those userspace reads code
//! objects and values with. Data only; adding a version is adding a
//! [`Layout`] to [`LAYOUTS`] (and a test run against that interpreter).
//! From 3.13 on the interpreter publishes most of these itself (see
//! [`super::debug_offsets`]), and [`Layout::with_debug_offsets`] takes them
//! from the target over the table.
//!
//! Every number comes from the debug info of pyenv's builds (3.6.15,
//! 3.7.16, 3.8.18, 3.9.18, 3.10.13, 3.11.7, 3.12.1, 3.13.0), read with gdb's
//! `ptype /o`; 3.11 was checked on Debian's 3.11.2 too. Internal
//! structures do not change within a minor version.
use tripod_common::{
    PythonOffsets, NO_FIELD, PYTHON_FRAME_READ_MAX, PYTHON_THREAD_MATCH_PTHREAD,
    PYTHON_THREAD_MATCH_TID,
};

use super::debug_offsets::DebugOffsets;
pub use super::lines::LineTable;

/// How the native `_PyEval_EvalFrameDefault` calls divide a thread's Python
/// frames: each call runs one group of frames, outermost frame first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMarker {
    /// 3.6 to 3.10: each frame is evaluated by a call of its own.
    EveryFrame,
    /// 3.11: the first frame of each call has `is_entry` set.
    IsEntry,
    /// 3.12 and later: each call starts with a frame of this `owner` value
    /// (`FRAME_OWNED_BY_CSTACK`) that runs no code.
    ShimOwner(u32),
}

/// What [`PythonOffsets::frame_instruction`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// `f_lasti`, the byte offset of the last instruction started (3.6 to
    /// 3.9); -1 before the first.
    LastiBytes,
    /// `f_lasti` in 2-byte code units (3.10); -1 before the first.
    LastiUnits,
    /// A pointer into the code object's bytecode (`prev_instr` in 3.11 and
    /// 3.12, `instr_ptr` from 3.13): the byte offset is
    /// `pointer - (code + code_units)`.
    Pointer,
}

/// Where a thread state's frame chain starts and how the thread is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadLayout {
    /// `_PyRuntimeState.interpreters.head` (0 in 3.6, whose `interp_head`
    /// is a variable of its own).
    pub runtime_interpreters_head: u32,
    /// `PyInterpreterState.next`.
    pub interpreter_next: u32,
    /// `PyInterpreterState.threads.head` (`tstate_head` before 3.12).
    pub interpreter_threads_head: u32,
    /// `PyThreadState.next`.
    pub thread_next: u32,
    /// `native_thread_id` (3.11 and later) or `thread_id` (a `pthread_t`).
    pub thread_id: u32,
    /// Which of the two `thread_id` is: `PYTHON_THREAD_MATCH_*`.
    pub thread_match: u32,
    /// `frame` (to 3.10), `cframe` (3.11, 3.12) or `current_frame` (3.13).
    pub thread_frame: u32,
    /// `_PyCFrame.current_frame`, when `thread_frame` is `cframe`.
    pub cframe_current_frame: Option<u32>,
}

/// The fields of a frame (`PyFrameObject` to 3.10, `_PyInterpreterFrame`
/// from 3.11), as offsets from the frame's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// `f_code` (`f_executable` in 3.13).
    pub code: u32,
    /// `f_back` (`previous` from 3.11).
    pub previous: u32,
    /// See [`Instruction`].
    pub instruction: u32,
    /// `is_entry` (3.11).
    pub is_entry: Option<u32>,
    /// `owner` (3.11 and later).
    pub owner: Option<u32>,
    /// `f_localsplus` (`localsplus` from 3.11): the frame's local, cell and
    /// free variable slots.
    pub localsplus: u32,
}

/// Where a code object keeps the names of its frame's slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalNames {
    /// `co_localsplusnames`, one tuple (3.11 and later).
    Plus { names: u32 },
    /// `co_varnames`, `co_cellvars` and `co_freevars`, whose slots follow
    /// each other in that order (to 3.10).
    Split {
        varnames: u32,
        cellvars: u32,
        freevars: u32,
    },
}

/// `PyCodeObject` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub firstlineno: u32,
    pub filename: u32,
    pub name: u32,
    /// `co_qualname` (3.11 and later).
    pub qualname: Option<u32>,
    /// `co_lnotab` (to 3.9) or `co_linetable`.
    pub linetable: u32,
    /// `co_code_adaptive`: where the bytecode starts, inside the object
    /// (3.11 and later, whose frames point into it).
    pub code_units: Option<u32>,
    pub locals: LocalNames,
    /// Bytes to read to cover every field above.
    pub read_size: u32,
}

/// Object layouts shared by every 64-bit build of a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    /// `PyObject.ob_type`.
    pub ob_type: u32,
    /// `PyVarObject.ob_size`: items of a list or tuple, bytes of a bytes
    /// object, and the digits of an int (see `long_tagged`).
    pub ob_size: u32,
    /// `PyTypeObject.tp_name`.
    pub tp_name: u32,
    /// `PyTypeObject.tp_flags`.
    pub tp_flags: u32,
    /// `PyTupleObject.ob_item`.
    pub tuple_items: u32,
    /// `PyLongObject.ob_digit`: 30-bit digits, least significant first.
    pub long_digits: u32,
    /// 3.12 and later: an int's size word is `lv_tag` (digit count << 3,
    /// sign in the low bits) rather than a signed digit count.
    pub long_tagged: bool,
    /// `PyFloatObject.ob_fval`.
    pub float_value: u32,
    /// `PyBytesObject.ob_sval`.
    pub bytes_data: u32,
    /// `PyASCIIObject.length`.
    pub str_length: u32,
    /// `PyASCIIObject.state`: bits 2-4 kind, 5 compact, 6 ascii.
    pub str_state: u32,
    /// `sizeof(PyASCIIObject)`: where the characters of a compact ASCII string start.
    pub str_ascii_data: u32,
    /// `sizeof(PyCompactUnicodeObject)`: where those of other compact strings start.
    pub str_compact_data: u32,
    /// `PyDictObject.ma_used`.
    pub dict_used: u32,
    /// `PySetObject.used`.
    pub set_used: u32,
    /// `PyCellObject.ob_ref`.
    pub cell_ref: u32,
}

/// Everything version-specific about one CPython minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub major: u8,
    pub minor: u8,
    pub thread: ThreadLayout,
    pub frame: FrameLayout,
    pub entry: EntryMarker,
    pub instruction: Instruction,
    pub line_table: LineTable,
    pub code: CodeLayout,
    pub object: ObjectLayout,
    /// Low bits of the frame's code field that are tags, not address
    /// (3.14 stores `f_executable` as a tagged `_PyStackRef`); the eBPF
    /// program clears them.
    pub code_tag_bits: u64,
}

/// Objects up to 3.11: strings still carry `wstr`, ints a signed size.
const OBJECTS_TO_3_11: ObjectLayout = ObjectLayout {
    ob_type: 0x8,
    ob_size: 0x10,
    tp_name: 0x18,
    tp_flags: 0xa8,
    tuple_items: 0x18,
    long_digits: 0x18,
    long_tagged: false,
    float_value: 0x10,
    bytes_data: 0x20,
    str_length: 0x10,
    str_state: 0x20,
    str_ascii_data: 0x30,
    str_compact_data: 0x48,
    dict_used: 0x10,
    set_used: 0x18,
    cell_ref: 0x10,
};

/// Objects from 3.12: no `wstr` (smaller string headers), tagged ints.
const OBJECTS_FROM_3_12: ObjectLayout = ObjectLayout {
    long_tagged: true,
    str_ascii_data: 0x28,
    str_compact_data: 0x38,
    ..OBJECTS_TO_3_11
};

/// A `PyFrameObject` chain (3.6 to 3.10): one frame per eval call, the
/// thread found by its `pthread_t`.
const fn frame_objects(
    runtime_interpreters_head: u32,
    thread_id: u32,
    lasti: u32,
    localsplus: u32,
) -> (ThreadLayout, FrameLayout) {
    let thread = ThreadLayout {
        runtime_interpreters_head,
        interpreter_next: 0x0,
        interpreter_threads_head: 0x8,
        thread_next: 0x8,
        thread_id,
        thread_match: PYTHON_THREAD_MATCH_PTHREAD,
        thread_frame: 0x18,
        cframe_current_frame: None,
    };
    let frame = FrameLayout {
        code: 0x20,
        previous: 0x18,
        instruction: lasti,
        is_entry: None,
        owner: None,
        localsplus,
    };
    (thread, frame)
}

/// Code objects before 3.11: names in three tuples, no qualified name.
const fn split_code(
    firstlineno: u32,
    varnames: u32,
    freevars: u32,
    cellvars: u32,
    filename: u32,
    name: u32,
    linetable: u32,
) -> CodeLayout {
    CodeLayout {
        firstlineno,
        filename,
        name,
        qualname: None,
        linetable,
        code_units: None,
        locals: LocalNames::Split {
            varnames,
            cellvars,
            freevars,
        },
        read_size: linetable + 8,
    }
}

const fn old_layout(
    minor: u8,
    threads: (ThreadLayout, FrameLayout),
    instruction: Instruction,
    line_table: LineTable,
    code: CodeLayout,
) -> Layout {
    Layout {
        major: 3,
        minor,
        thread: threads.0,
        frame: threads.1,
        entry: EntryMarker::EveryFrame,
        instruction,
        line_table,
        code,
        object: OBJECTS_TO_3_11,
        code_tag_bits: 0,
    }
}

const PYTHON_3_6: Layout = old_layout(
    6,
    frame_objects(0x0, 0x98, 0x78, 0x178),
    Instruction::LastiBytes,
    LineTable::Lnotab,
    split_code(0x24, 0x40, 0x48, 0x50, 0x60, 0x68, 0x70),
);

const PYTHON_3_7: Layout = old_layout(
    7,
    frame_objects(0x18, 0xb0, 0x68, 0x168),
    Instruction::LastiBytes,
    LineTable::Lnotab,
    split_code(0x24, 0x40, 0x48, 0x50, 0x60, 0x68, 0x70),
);

/// 3.8 and 3.9 differ in nothing we read.
const PYTHON_3_8: Layout = old_layout(
    8,
    frame_objects(0x20, 0xb0, 0x68, 0x168),
    Instruction::LastiBytes,
    LineTable::Lnotab,
    split_code(0x28, 0x48, 0x50, 0x58, 0x68, 0x70, 0x78),
);

const PYTHON_3_9: Layout = Layout {
    minor: 9,
    ..PYTHON_3_8
};

const PYTHON_3_10: Layout = old_layout(
    10,
    frame_objects(0x20, 0xb0, 0x60, 0x160),
    Instruction::LastiUnits,
    LineTable::Linetable310,
    split_code(0x28, 0x48, 0x50, 0x58, 0x68, 0x70, 0x78),
);

/// Code objects from 3.11: one tuple of slot names, a qualified name, and
/// the bytecode inside the object.
const fn plus_code(firstlineno: u32, code_units: u32) -> CodeLayout {
    CodeLayout {
        firstlineno,
        filename: 0x70,
        name: 0x78,
        qualname: Some(0x80),
        linetable: 0x88,
        code_units: Some(code_units),
        locals: LocalNames::Plus { names: 0x60 },
        read_size: 0x90,
    }
}

/// Thread states from 3.11: found by `native_thread_id`.
const fn native_threads(
    runtime_interpreters_head: u32,
    interpreter_next: u32,
    interpreter_threads_head: u32,
    thread_id: u32,
    thread_frame: u32,
    cframe_current_frame: Option<u32>,
) -> ThreadLayout {
    ThreadLayout {
        runtime_interpreters_head,
        interpreter_next,
        interpreter_threads_head,
        thread_next: 0x8,
        thread_id,
        thread_match: PYTHON_THREAD_MATCH_TID,
        thread_frame,
        cframe_current_frame,
    }
}

const PYTHON_3_11: Layout = Layout {
    major: 3,
    minor: 11,
    thread: native_threads(0x28, 0x0, 0x10, 0xa0, 0x38, Some(0x8)),
    frame: FrameLayout {
        code: 0x20,
        previous: 0x30,
        instruction: 0x38,
        is_entry: Some(0x44),
        owner: Some(0x45),
        localsplus: 0x48,
    },
    entry: EntryMarker::IsEntry,
    instruction: Instruction::Pointer,
    line_table: LineTable::Locations,
    code: plus_code(0x48, 0xb8),
    object: OBJECTS_TO_3_11,
    code_tag_bits: 0,
};

/// `FRAME_OWNED_BY_CSTACK` in 3.12 and 3.13: the shim frame each
/// `_PyEval_EvalFrameDefault` call pushes first.
const FRAME_OWNED_BY_CSTACK: u32 = 3;

const PYTHON_3_12: Layout = Layout {
    major: 3,
    minor: 12,
    thread: native_threads(0x28, 0x0, 0x48, 0x90, 0x38, Some(0x0)),
    frame: FrameLayout {
        code: 0x0,
        previous: 0x8,
        instruction: 0x38,
        is_entry: None,
        owner: Some(0x46),
        localsplus: 0x48,
    },
    entry: EntryMarker::ShimOwner(FRAME_OWNED_BY_CSTACK),
    instruction: Instruction::Pointer,
    line_table: LineTable::Locations,
    code: plus_code(0x44, 0xc0),
    object: OBJECTS_FROM_3_12,
    code_tag_bits: 0,
};

/// 3.13: the current frame hangs off the thread state; `f_executable`.
const PYTHON_3_13: Layout = Layout {
    minor: 13,
    thread: native_threads(0x278, 0x1c60, 0x1cb0, 0xa0, 0x48, None),
    code: plus_code(0x44, 0xc8),
    ..PYTHON_3_12
};

/// Every version with a table. Only versions a test has run are listed.
pub const LAYOUTS: &[Layout] = &[
    PYTHON_3_6,
    PYTHON_3_7,
    PYTHON_3_8,
    PYTHON_3_9,
    PYTHON_3_10,
    PYTHON_3_11,
    PYTHON_3_12,
    PYTHON_3_13,
];

/// The table of Python `major.minor`, if it has one.
pub fn for_version(major: u8, minor: u8) -> Option<&'static Layout> {
    LAYOUTS
        .iter()
        .find(|l| l.major == major && l.minor == minor)
}

/// `3.6, ..., 3.13`, for messages.
pub fn supported_versions() -> String {
    let tables = LAYOUTS
        .iter()
        .map(|l| format!("{}.{}", l.major, l.minor))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{tables}, and later versions that publish their offsets")
}

impl Layout {
    /// The layout the interpreter publishes (3.13 and later), with what it
    /// does not publish (where compact non-ASCII strings, dicts, sets and
    /// cells keep their fields, `tp_flags` bits) from `base`, the table of
    /// that version or the newest we have. `None` if an offset does not fit
    /// what the eBPF program can read.
    pub fn with_debug_offsets(base: &Layout, published: &DebugOffsets) -> Option<Layout> {
        let d = published;
        let minor = (d.version_hex >> 16) as u8;
        let layout = Layout {
            major: (d.version_hex >> 24) as u8,
            minor,
            thread: published_thread(d)?,
            frame: published_frame(d)?,
            // The frame each eval call pushes has owner 3 from 3.12 on
            // (`FRAME_OWNED_BY_CSTACK`, renamed `..._INTERPRETER` in 3.14).
            entry: EntryMarker::ShimOwner(FRAME_OWNED_BY_CSTACK),
            instruction: Instruction::Pointer,
            line_table: LineTable::Locations,
            code: published_code(d)?,
            object: published_objects(d, &base.object)?,
            // 3.14 keeps `f_executable` as a `_PyStackRef`, tagged in its low bits.
            code_tag_bits: if minor >= 14 { 3 } else { 0 },
        };
        layout.is_consistent().then_some(layout)
    }

    /// What the eBPF program needs: thread and frame offsets, frame fields
    /// relative to the start of the one read it makes per frame.
    pub fn kernel(&self) -> PythonOffsets {
        let f = &self.frame;
        let starts = [
            Some(f.code),
            Some(f.previous),
            Some(f.instruction),
            f.is_entry,
            f.owner,
        ];
        let ends = [f.code + 8, f.previous + 8, f.instruction + 8]
            .into_iter()
            .chain(f.is_entry.map(|o| o + 1))
            .chain(f.owner.map(|o| o + 1));
        let start = starts.into_iter().flatten().min().unwrap_or(0) & !7;
        let end = ends.max().unwrap_or(0);
        let relative = |offset: Option<u32>| offset.map_or(NO_FIELD, |o| o - start);
        PythonOffsets {
            runtime_interpreters_head: self.thread.runtime_interpreters_head,
            interpreter_next: self.thread.interpreter_next,
            interpreter_threads_head: self.thread.interpreter_threads_head,
            thread_next: self.thread.thread_next,
            thread_native_id: self.thread.thread_id,
            thread_frame: self.thread.thread_frame,
            cframe_current_frame: self.thread.cframe_current_frame.unwrap_or(NO_FIELD),
            frame_code: relative(Some(f.code)),
            frame_previous: relative(Some(f.previous)),
            frame_instruction: relative(Some(f.instruction)),
            frame_is_entry: relative(f.is_entry),
            frame_owner: relative(f.owner),
            frame_read_size: (end - start + 7) & !7,
            frame_read_start: start,
            thread_match: self.thread.thread_match,
            code_names: self.code_names().unwrap_or(NO_FIELD),
            code_tag_bits: self.code_tag_bits as u32,
            _reserved: 0,
        }
    }

    /// Where `co_filename` and `co_name` lie side by side (every version so
    /// far), for the identity the eBPF program reads with each frame.
    fn code_names(&self) -> Option<u32> {
        (self.code.name == self.code.filename + 8).then_some(self.code.filename)
    }

    /// Checks what the eBPF program relies on: pointer fields 8-aligned, and
    /// every frame field inside the bytes it reads, fewer than
    /// [`PYTHON_FRAME_READ_MAX`].
    pub fn is_consistent(&self) -> bool {
        let k = self.kernel();
        let within =
            |offset: u32, size: u32| offset == NO_FIELD || offset + size <= k.frame_read_size;
        k.frame_read_size < PYTHON_FRAME_READ_MAX
            && [k.frame_code, k.frame_previous, k.frame_instruction]
                .iter()
                .all(|&o| o % 8 == 0 && within(o, 8))
            && within(k.frame_is_entry, 1)
            && within(k.frame_owner, 1)
    }
}

/// An offset the interpreter published, if it fits what we keep.
fn offset(value: u64) -> Option<u32> {
    u32::try_from(value).ok()
}

fn published_thread(d: &DebugOffsets) -> Option<ThreadLayout> {
    Some(ThreadLayout {
        runtime_interpreters_head: offset(d.runtime_interpreters_head)?,
        interpreter_next: offset(d.interpreter_next)?,
        interpreter_threads_head: offset(d.interpreter_threads_head)?,
        thread_next: offset(d.thread_next)?,
        thread_id: offset(d.thread_native_thread_id)?,
        thread_match: PYTHON_THREAD_MATCH_TID,
        thread_frame: offset(d.thread_current_frame)?,
        cframe_current_frame: None,
    })
}

fn published_frame(d: &DebugOffsets) -> Option<FrameLayout> {
    Some(FrameLayout {
        code: offset(d.frame_executable)?,
        previous: offset(d.frame_previous)?,
        instruction: offset(d.frame_instr_ptr)?,
        is_entry: None,
        owner: Some(offset(d.frame_owner)?),
        localsplus: offset(d.frame_localsplus)?,
    })
}

fn published_code(d: &DebugOffsets) -> Option<CodeLayout> {
    let fields = [
        d.code_firstlineno,
        d.code_filename,
        d.code_name,
        d.code_linetable,
    ];
    let last = fields
        .into_iter()
        .chain(d.code_qualname)
        .chain([d.code_localsplusnames])
        .max()?;
    Some(CodeLayout {
        firstlineno: offset(d.code_firstlineno)?,
        filename: offset(d.code_filename)?,
        name: offset(d.code_name)?,
        qualname: d.code_qualname.and_then(offset),
        linetable: offset(d.code_linetable)?,
        code_units: Some(offset(d.code_co_code_adaptive)?),
        locals: LocalNames::Plus {
            names: offset(d.code_localsplusnames)?,
        },
        read_size: offset(last)?.checked_add(8)?,
    })
}

/// What objects the interpreter describes; the rest (where compact
/// non-ASCII strings, dicts, sets and cells keep their fields) from `base`.
fn published_objects(d: &DebugOffsets, base: &ObjectLayout) -> Option<ObjectLayout> {
    Some(ObjectLayout {
        ob_type: offset(d.object_ob_type)?,
        ob_size: offset(d.tuple_ob_size)?,
        tp_name: offset(d.type_tp_name)?,
        tp_flags: offset(d.type_tp_flags)?,
        tuple_items: offset(d.tuple_ob_item)?,
        long_digits: offset(d.long_ob_digit)?,
        long_tagged: true,
        float_value: offset(d.float_ob_fval)?,
        bytes_data: offset(d.bytes_ob_sval)?,
        str_length: offset(d.unicode_length)?,
        str_state: offset(d.unicode_state)?,
        str_ascii_data: offset(d.unicode_asciiobject_size)?,
        ..*base
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_keeps_frame_fields_inside_the_bytes_read() {
        for layout in LAYOUTS {
            assert!(layout.is_consistent(), "{}.{}", layout.major, layout.minor);
        }
    }

    #[test]
    fn frames_are_read_from_their_first_field() {
        // 3.6's f_lasti lies past the first 128 bytes: the read starts at f_back.
        let k = for_version(3, 6).unwrap().kernel();
        assert_eq!(k.frame_read_start, 0x18);
        assert_eq!(
            (k.frame_previous, k.frame_code, k.frame_instruction),
            (0, 8, 0x60)
        );
        assert_eq!(k.frame_read_size, 0x68);
        assert_eq!(k.thread_match, PYTHON_THREAD_MATCH_PTHREAD);
        assert_eq!(k.code_names, 0x60);
        // 3.11 keeps the layout the eBPF program read before there was a start.
        let k = for_version(3, 11).unwrap().kernel();
        assert_eq!(k.frame_read_start, 0x20);
        assert_eq!(
            (k.frame_code, k.frame_previous, k.frame_instruction),
            (0, 0x10, 0x18)
        );
        assert_eq!((k.frame_is_entry, k.frame_owner), (0x24, 0x25));
        assert_eq!(k.frame_read_size, 0x28);
        assert_eq!(k.thread_match, PYTHON_THREAD_MATCH_TID);
    }

    #[test]
    fn versions_are_found_by_number() {
        assert_eq!(for_version(3, 11).map(|l| l.minor), Some(11));
        assert!(for_version(3, 5).is_none());
        assert!(for_version(3, 14).is_none());
        assert!(supported_versions().starts_with("3.6, 3.7, 3.8, 3.9, 3.10, 3.11, 3.12, 3.13"));
    }
}
