//! Where CPython keeps what we read, per supported version: the offsets
//! the eBPF program walks frames with, and those userspace reads code
//! objects and values with. Data only; adding a version is adding a
//! [`Layout`] to [`LAYOUTS`] (and a test run against that interpreter).
//!
//! The 3.11 numbers come from the debug info of CPython 3.11.7 (pyenv's
//! build) and were checked on Debian's 3.11.2: internal structures do not
//! change within a minor version.
use tripod_common::{PythonOffsets, NO_FIELD};

/// How the native `_PyEval_EvalFrameDefault` calls divide a thread's Python
/// frames: each call runs one group of frames, outermost frame first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMarker {
    /// 3.11: the first frame of each call has `is_entry` set.
    IsEntry,
    /// 3.12 and later: each call starts with a frame of this `owner` value
    /// (`FRAME_OWNED_BY_CSTACK`) that runs no code.
    ShimOwner(u32),
}

/// What [`PythonOffsets::frame_instruction`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// A pointer to the last instruction started (`prev_instr`): the
    /// instruction index is `(pointer - (code + code_units)) / 2`.
    Pointer,
}

/// How `co_linetable` maps instructions to lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// The location table of 3.11 and later (`Objects/locations.md`).
    Locations,
}

/// `PyCodeObject` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLayout {
    pub argcount: u32,
    pub firstlineno: u32,
    pub nlocalsplus: u32,
    pub localsplusnames: u32,
    pub localspluskinds: u32,
    pub filename: u32,
    pub name: u32,
    pub linetable: u32,
    /// `co_code_adaptive`: where the bytecode starts, inside the object.
    pub code_units: u32,
    /// Bytes to read to cover every field above.
    pub read_size: u32,
}

/// Object layouts shared by every 64-bit build of a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    /// `PyObject.ob_type`.
    pub ob_type: u32,
    /// `PyVarObject.ob_size`: items of a list or tuple, digits of an int
    /// (negative for negative ints), bytes of a bytes object.
    pub ob_size: u32,
    /// `PyTypeObject.tp_name`.
    pub tp_name: u32,
    /// `PyTypeObject.tp_flags`.
    pub tp_flags: u32,
    /// `PyTupleObject.ob_item`.
    pub tuple_items: u32,
    /// `PyLongObject.ob_digit`: 30-bit digits, least significant first.
    pub long_digits: u32,
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
    /// For the eBPF program.
    pub kernel: PythonOffsets,
    pub entry: EntryMarker,
    pub instruction: Instruction,
    pub line_table: LineTable,
    pub code: CodeLayout,
    pub object: ObjectLayout,
    /// `_PyInterpreterFrame.localsplus`: the frame's locals, cells and free
    /// variables, `co_nlocalsplus` object pointers.
    pub frame_localsplus: u32,
}

/// CPython 3.11.
const PYTHON_3_11: Layout = Layout {
    major: 3,
    minor: 11,
    kernel: PythonOffsets {
        runtime_interpreters_head: 0x28,
        interpreter_next: 0x0,
        interpreter_threads_head: 0x10,
        thread_next: 0x8,
        thread_native_id: 0xa0,
        thread_frame: 0x38,
        cframe_current_frame: 0x8,
        frame_code: 0x20,
        frame_previous: 0x30,
        frame_instruction: 0x38,
        frame_is_entry: 0x44,
        frame_owner: 0x45,
        frame_read_size: 0x48,
        _reserved: 0,
    },
    entry: EntryMarker::IsEntry,
    instruction: Instruction::Pointer,
    line_table: LineTable::Locations,
    code: CodeLayout {
        argcount: 0x38,
        firstlineno: 0x48,
        nlocalsplus: 0x4c,
        localsplusnames: 0x60,
        localspluskinds: 0x68,
        filename: 0x70,
        name: 0x78,
        linetable: 0x88,
        code_units: 0xb8,
        read_size: 0x90,
    },
    object: ObjectLayout {
        ob_type: 0x8,
        ob_size: 0x10,
        tp_name: 0x18,
        tp_flags: 0xa8,
        tuple_items: 0x18,
        long_digits: 0x18,
        float_value: 0x10,
        bytes_data: 0x20,
        str_length: 0x10,
        str_state: 0x20,
        str_ascii_data: 0x30,
        str_compact_data: 0x48,
        dict_used: 0x10,
        set_used: 0x18,
        cell_ref: 0x10,
    },
    frame_localsplus: 0x48,
};

/// Every supported version. Only versions a test has run are listed.
pub const LAYOUTS: &[Layout] = &[PYTHON_3_11];

/// The layout of Python `major.minor`, if supported.
pub fn for_version(major: u8, minor: u8) -> Option<&'static Layout> {
    LAYOUTS
        .iter()
        .find(|l| l.major == major && l.minor == minor)
}

/// `3.11`, for messages.
pub fn supported_versions() -> String {
    LAYOUTS
        .iter()
        .map(|l| format!("{}.{}", l.major, l.minor))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Layout {
    /// Checks what the eBPF program relies on: frame fields inside the bytes it reads.
    pub fn is_consistent(&self) -> bool {
        let k = &self.kernel;
        let within =
            |offset: u32, size: u32| offset == NO_FIELD || offset + size <= k.frame_read_size;
        k.frame_read_size < tripod_common::PYTHON_FRAME_READ_MAX
            && [k.frame_code, k.frame_previous, k.frame_instruction]
                .iter()
                .all(|&o| o % 8 == 0 && within(o, 8))
            && within(k.frame_is_entry, 1)
            && within(k.frame_owner, 1)
    }
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
    fn versions_are_found_by_number() {
        assert_eq!(for_version(3, 11).map(|l| l.minor), Some(11));
        assert!(for_version(3, 12).is_none());
        assert_eq!(supported_versions(), "3.11");
    }
}
