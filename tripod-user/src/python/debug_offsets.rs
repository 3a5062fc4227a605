//! `_Py_DebugOffsets`: the table of offsets that CPython 3.13 and later
//! keep at the very start of `_PyRuntime` for out-of-process tools
//! (gh-106597). Reading it from the target lets us walk 3.14, 3.15 and
//! builds with unusual configure flags without a table of our own.
//!
//! The table is a `char cookie[8]` ("xdebugpy"), then `uint64_t version`
//! (`PY_VERSION_HEX`), `uint64_t free_threaded`, then one group of
//! `uint64_t` per structure, most groups starting with `size`
//! (`sizeof` the structure). Every field is a `uint64_t`, so a field's byte
//! offset is 8 times its index. The groups only ever grow inside (fields are
//! inserted, not only appended), so each minor version has its own shape:
//!
//! | version | header | size | shape |
//! | --- | --- | --- | --- |
//! | 3.13 | `pycore_runtime.h` | 584 | [`Format::V3_13`] |
//! | 3.14 | `pycore_debug_offsets.h` (moved there) | 760 | [`Format::V3_14`]: adds `threads_main`, `code_object_generation`, `tlbc_generation`, frame `stackpointer`, `tlbc_index`, code `co_tlbc`, groups `set_object`, `gen_object`, `llist_node`, `debugger_support` |
//! | 3.15 | `pycore_debug_offsets.h` | 888 | [`Format::V3_15`]: thread state gains `base_frame`, `last_profiled_frame`, `last_profiled_frame_seq` (before `thread_id`) and four fields after `status`; new groups `err_stackitem`, `heap_type_object`; more fields in `type_object`, `unicode_object`, `gc` |
//!
//! Sources: 3.13.0's installed header and gdb on pyenv's 3.13.0 library;
//! Debian's 3.14.10 and 3.15.2 headers and the `_PyRuntime` initialisers of
//! their libraries. The shape is fixed within a minor version once it is
//! released (pre-releases did change it: 3.13.0b4, 3.15.0b4), so
//! pre-releases of 3.13 to 3.15 are refused.
//!
//! Parsing never panics and never allocates: the bytes come from another
//! process and may be anything.

/// The offsets a 3.13+ interpreter publishes about itself at the start of
/// `_PyRuntime`. Offsets are in bytes from the start of the structure named
/// by the field's prefix (`runtime_` = `_PyRuntimeState`, `interpreter_` =
/// `PyInterpreterState`, `thread_` = `PyThreadState`, `frame_` =
/// `_PyInterpreterFrame`, `code_` = `PyCodeObject`, …); `*_size` fields are
/// `sizeof` the structure.
///
/// Worth knowing when using them (3.14): `frame_executable` holds a
/// `_PyStackRef`, a tagged pointer; clear the low two bits
/// (`Py_TAG_BITS` = 3) before following it (free-threaded builds use one
/// bit, but those are refused here). `frame_owner` is a `char`; the frame
/// that each `_PyEval_EvalFrameDefault` call pushes has owner 3 in 3.12 to
/// 3.15 (`FRAME_OWNED_BY_CSTACK` in 3.12/3.13, `FRAME_OWNED_BY_INTERPRETER`
/// from 3.14, where `FRAME_OWNED_BY_CSTACK` became 4 and is unused).
// Offered whole: callers read what their walk needs.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugOffsets {
    /// `PY_VERSION_HEX`: major = `>> 24`, minor = `>> 16 & 0xff`.
    pub version_hex: u64,
    /// Always false in what [`parse`] returns: free-threaded builds are
    /// refused ([`Refused::FreeThreaded`]).
    pub free_threaded: bool,
    /// `sizeof(_PyRuntimeState)`.
    pub runtime_size: u64,
    pub runtime_interpreters_head: u64,
    /// `sizeof(PyInterpreterState)`.
    pub interpreter_size: u64,
    pub interpreter_next: u64,
    pub interpreter_threads_head: u64,
    /// `threads.main`, published from 3.14.
    pub interpreter_threads_main: Option<u64>,
    /// `sizeof(PyThreadState)`.
    pub thread_size: u64,
    pub thread_next: u64,
    /// `pthread_t`.
    pub thread_thread_id: u64,
    /// The kernel's tid.
    pub thread_native_thread_id: u64,
    pub thread_current_frame: u64,
    /// `sizeof(_PyInterpreterFrame)`, without `localsplus`.
    pub frame_size: u64,
    pub frame_previous: u64,
    /// A `PyObject *` in 3.13, a tagged `_PyStackRef` from 3.14.
    pub frame_executable: u64,
    pub frame_instr_ptr: u64,
    pub frame_localsplus: u64,
    /// A `char`.
    pub frame_owner: u64,
    /// Published from 3.14.
    pub frame_stackpointer: Option<u64>,
    /// `sizeof(PyCodeObject)`, without the bytecode.
    pub code_size: u64,
    pub code_filename: u64,
    pub code_name: u64,
    /// Some for every format we know (3.13 already publishes it); kept
    /// optional so that a format without it can be added.
    pub code_qualname: Option<u64>,
    pub code_linetable: u64,
    /// An `int`.
    pub code_firstlineno: u64,
    /// An `int`.
    pub code_argcount: u64,
    pub code_localsplusnames: u64,
    pub code_localspluskinds: u64,
    pub code_co_code_adaptive: u64,
    /// `sizeof(PyObject)`.
    pub object_size: u64,
    pub object_ob_type: u64,
    /// `sizeof(PyTypeObject)`.
    pub type_size: u64,
    pub type_tp_name: u64,
    /// An `unsigned long`.
    pub type_tp_flags: u64,
    /// `sizeof(PyTupleObject)` (with one item).
    pub tuple_size: u64,
    pub tuple_ob_item: u64,
    pub tuple_ob_size: u64,
    /// `sizeof(PyListObject)`.
    pub list_size: u64,
    pub list_ob_item: u64,
    pub list_ob_size: u64,
    /// `sizeof(PyDictObject)`.
    pub dict_size: u64,
    pub dict_ma_keys: u64,
    pub dict_ma_values: u64,
    /// `sizeof(PyFloatObject)`.
    pub float_size: u64,
    pub float_ob_fval: u64,
    /// `sizeof(PyLongObject)`.
    pub long_size: u64,
    pub long_lv_tag: u64,
    pub long_ob_digit: u64,
    /// `sizeof(PyBytesObject)`.
    pub bytes_size: u64,
    pub bytes_ob_size: u64,
    pub bytes_ob_sval: u64,
    /// `sizeof(PyUnicodeObject)`.
    pub unicode_size: u64,
    /// The `state` bit field (a 32-bit word): `interned` bits 0-1, `kind`
    /// bits 2-4, `compact` bit 5, `ascii` bit 6 in 3.13 to 3.15 (default
    /// builds).
    pub unicode_state: u64,
    pub unicode_length: u64,
    /// `sizeof(PyASCIIObject)`: a compact ASCII string's characters follow.
    pub unicode_asciiobject_size: u64,
}

/// Why debug offsets could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The bytes do not start with "xdebugpy".
    NoCookie,
    /// Fewer bytes than the format needs.
    TooShort,
    /// A version whose shape we do not know: before 3.13, a pre-release of
    /// 3.13 to 3.15, or not Python 3 at all.
    UnknownFormat { major: u8, minor: u8 },
    /// A free-threaded (`--disable-gil`) build, which we do not support.
    FreeThreaded,
    /// A value that no interpreter of this format would publish.
    Implausible(&'static str),
}

/// The shapes of `_Py_DebugOffsets` we know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    V3_13,
    V3_14,
    V3_15,
}

/// The byte offset, inside `_Py_DebugOffsets`, of each field we read, for
/// one format. `None`: the format does not publish it.
struct Fields {
    len: usize,
    runtime_size: usize,
    runtime_interpreters_head: usize,
    interpreter_size: usize,
    interpreter_next: usize,
    interpreter_threads_head: usize,
    interpreter_threads_main: Option<usize>,
    thread: usize,
    /// The thread state group's shape: 3.15 put three fields before
    /// `thread_id`.
    thread_id_index: usize,
    frame: usize,
    frame_has_stackpointer: bool,
    code: usize,
    /// `pyobject`, then `type_object`, `tuple_object` and `list_object`.
    object: usize,
    /// `dict_object`, then `float_object`, `long_object`, `bytes_object`,
    /// `unicode_object`.
    dict: usize,
}

impl Format {
    /// The shape for a `PY_VERSION_HEX`, if we know it.
    pub fn for_version(version_hex: u64) -> Result<Format, Refused> {
        let major = (version_hex >> 24) as u8;
        let minor = (version_hex >> 16) as u8;
        let unknown = Refused::UnknownFormat { major, minor };
        if version_hex >> 32 != 0 || major != 3 || minor < 13 {
            return Err(unknown);
        }
        // Micro 0 before a release candidate: an alpha or beta, whose shape
        // may differ from the release's.
        let level = (version_hex >> 4) & 0xf;
        let micro = (version_hex >> 8) & 0xff;
        let prerelease = micro == 0 && level < 0xc;
        match minor {
            13..=15 if prerelease => Err(unknown),
            13 => Ok(Format::V3_13),
            14 => Ok(Format::V3_14),
            // The newest shape we know; see `parse` for what guards later
            // versions.
            _ => Ok(Format::V3_15),
        }
    }

    /// Bytes of `_Py_DebugOffsets` in this format.
    #[cfg(test)]
    fn table_len(self) -> usize {
        self.fields().len
    }

    const fn fields(self) -> Fields {
        match self {
            // 3 + 3 + 13 (interpreter) + 9 (thread) + 6 (frame) + 10 (code)
            // + 2 + 4 + 3 + 3 + 3 + 2 + 3 + 3 + 4 + 2 fields.
            Format::V3_13 => Fields {
                len: 584,
                runtime_size: 24,
                runtime_interpreters_head: 40,
                interpreter_size: 48,
                interpreter_next: 64,
                interpreter_threads_head: 72,
                interpreter_threads_main: None,
                thread: 152,
                thread_id_index: 5,
                frame: 224,
                frame_has_stackpointer: false,
                code: 272,
                object: 352,
                dict: 448,
            },
            // interpreter_state has 16 fields (threads_main after
            // threads_head), interpreter_frame 8, code_object 11, and
            // set_object (4) sits between list_object and dict_object.
            Format::V3_14 => Fields {
                len: 760,
                runtime_size: 24,
                runtime_interpreters_head: 40,
                interpreter_size: 48,
                interpreter_next: 64,
                interpreter_threads_head: 72,
                interpreter_threads_main: Some(80),
                thread: 176,
                thread_id_index: 5,
                frame: 248,
                frame_has_stackpointer: true,
                code: 312,
                object: 400,
                dict: 528,
            },
            // thread_state has 16 fields, err_stackitem (1) follows it,
            // type_object has 6 and heap_type_object (2) follows it.
            Format::V3_15 => Fields {
                len: 888,
                runtime_size: 24,
                runtime_interpreters_head: 40,
                interpreter_size: 48,
                interpreter_next: 64,
                interpreter_threads_head: 72,
                interpreter_threads_main: Some(80),
                thread: 176,
                thread_id_index: 8,
                frame: 312,
                frame_has_stackpointer: true,
                code: 376,
                object: 464,
                dict: 624,
            },
        }
    }
}

/// Bytes to read from the start of `_PyRuntime` to parse any format we know.
pub const READ_SIZE: usize = 888;

const COOKIE: &[u8; 8] = b"xdebugpy";

/// Largest `sizeof` of the runtime and interpreter states we accept (they
/// are a few hundred KiB).
const MAX_STATE_SIZE: u64 = 16 << 20;
/// Largest `sizeof` of any other structure we accept.
const MAX_OBJECT_SIZE: u64 = 64 << 10;

/// Reads `_Py_DebugOffsets` from the first bytes of a target's
/// `_PyRuntime` (read [`READ_SIZE`] bytes, or fewer if the mapping ends
/// sooner: a format needs only its own length).
///
/// The shape is chosen by the version in the table: 3.13 → 3.13's, 3.14 →
/// 3.14's, 3.15 and later → 3.15's. A later version whose table changed
/// shape again will read its fields from the wrong places, and is refused
/// by the plausibility checks, which are:
/// - `free_threaded` is 0 (1 → [`Refused::FreeThreaded`], else implausible);
/// - every `size` is a non-zero multiple of 8, at most 16 MiB for the
///   runtime and interpreter states and 64 KiB for the others;
/// - every offset lies inside its structure (a field's end is at most the
///   structure's size; flexible arrays such as `localsplus` may start at
///   the end), pointer-sized fields are 8-aligned, `int`s 4-aligned;
/// - `PyObject` is the default build's: `ob_type` at 8, size 16;
/// - `PyASCIIObject` fits in `PyUnicodeObject` and holds `state` and
///   `length`.
///
/// A table that moved by 8 or more bytes puts `size`s where offsets were,
/// which these checks catch in practice; they cannot prove the shape.
pub fn parse(bytes: &[u8]) -> Result<DebugOffsets, Refused> {
    let (version_hex, format) = header(bytes)?;
    let offsets = read_fields(bytes, version_hex, format)?;
    check(&offsets)?;
    Ok(offsets)
}

/// The version and table shape of the bytes, once the cookie, the length
/// and the build (not free-threaded) are checked.
fn header(bytes: &[u8]) -> Result<(u64, Format), Refused> {
    if bytes.len() < 24 {
        return Err(if bytes.len() >= 8 && &bytes[..8] != COOKIE {
            Refused::NoCookie
        } else {
            Refused::TooShort
        });
    }
    if &bytes[..8] != COOKIE {
        return Err(Refused::NoCookie);
    }
    let version_hex = u64_at(bytes, 8).ok_or(Refused::TooShort)?;
    let format = Format::for_version(version_hex)?;
    if bytes.len() < format.fields().len {
        return Err(Refused::TooShort);
    }
    match u64_at(bytes, 16).ok_or(Refused::TooShort)? {
        0 => Ok((version_hex, format)),
        1 => Err(Refused::FreeThreaded),
        _ => Err(Refused::Implausible("free_threaded is neither 0 nor 1")),
    }
}

/// Every field of a table of `format`'s shape, unchecked.
fn read_fields(bytes: &[u8], version_hex: u64, format: Format) -> Result<DebugOffsets, Refused> {
    let fields = format.fields();
    // Every read is inside `fields.len`, which `header` checked is inside
    // `bytes`; a failed read is still an error, never a panic.
    let at = |offset: usize| u64_at(bytes, offset).ok_or(Refused::TooShort);
    let slot = |group: usize, index: usize| at(group + 8 * index);
    let t = fields.thread;
    let id = fields.thread_id_index;
    let f = fields.frame;
    let c = fields.code;
    let o = fields.object;
    let d = fields.dict;
    Ok(DebugOffsets {
        version_hex,
        free_threaded: false,
        runtime_size: at(fields.runtime_size)?,
        runtime_interpreters_head: at(fields.runtime_interpreters_head)?,
        interpreter_size: at(fields.interpreter_size)?,
        interpreter_next: at(fields.interpreter_next)?,
        interpreter_threads_head: at(fields.interpreter_threads_head)?,
        interpreter_threads_main: match fields.interpreter_threads_main {
            Some(offset) => Some(at(offset)?),
            None => None,
        },
        thread_size: slot(t, 0)?,
        thread_next: slot(t, 2)?,
        thread_current_frame: slot(t, 4)?,
        thread_thread_id: slot(t, id)?,
        thread_native_thread_id: slot(t, id + 1)?,
        frame_size: slot(f, 0)?,
        frame_previous: slot(f, 1)?,
        frame_executable: slot(f, 2)?,
        frame_instr_ptr: slot(f, 3)?,
        frame_localsplus: slot(f, 4)?,
        frame_owner: slot(f, 5)?,
        frame_stackpointer: if fields.frame_has_stackpointer {
            Some(slot(f, 6)?)
        } else {
            None
        },
        code_size: slot(c, 0)?,
        code_filename: slot(c, 1)?,
        code_name: slot(c, 2)?,
        code_qualname: Some(slot(c, 3)?),
        code_linetable: slot(c, 4)?,
        code_firstlineno: slot(c, 5)?,
        code_argcount: slot(c, 6)?,
        code_localsplusnames: slot(c, 7)?,
        code_localspluskinds: slot(c, 8)?,
        code_co_code_adaptive: slot(c, 9)?,
        object_size: slot(o, 0)?,
        object_ob_type: slot(o, 1)?,
        type_size: slot(o, 2)?,
        type_tp_name: slot(o, 3)?,
        type_tp_flags: slot(o, 5)?,
        // `tuple_object` follows `type_object`, whose length differs.
        tuple_size: slot(tuple_group(format, o), 0)?,
        tuple_ob_item: slot(tuple_group(format, o), 1)?,
        tuple_ob_size: slot(tuple_group(format, o), 2)?,
        list_size: slot(tuple_group(format, o), 3)?,
        list_ob_item: slot(tuple_group(format, o), 4)?,
        list_ob_size: slot(tuple_group(format, o), 5)?,
        dict_size: slot(d, 0)?,
        dict_ma_keys: slot(d, 1)?,
        dict_ma_values: slot(d, 2)?,
        float_size: slot(d, 3)?,
        float_ob_fval: slot(d, 4)?,
        long_size: slot(d, 5)?,
        long_lv_tag: slot(d, 6)?,
        long_ob_digit: slot(d, 7)?,
        bytes_size: slot(d, 8)?,
        bytes_ob_size: slot(d, 9)?,
        bytes_ob_sval: slot(d, 10)?,
        unicode_size: slot(d, 11)?,
        unicode_state: slot(d, 12)?,
        unicode_length: slot(d, 13)?,
        unicode_asciiobject_size: slot(d, 14)?,
    })
}

/// Where `tuple_object` starts: after `type_object` (4 fields, 6 in 3.15)
/// and, in 3.15, `heap_type_object` (2).
fn tuple_group(format: Format, object: usize) -> usize {
    let type_fields = match format {
        Format::V3_13 | Format::V3_14 => 4,
        Format::V3_15 => 6 + 2,
    };
    object + 8 * (2 + type_fields)
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let end = offset.checked_add(8)?;
    let chunk: [u8; 8] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// What a field holds, for the checks: its width and alignment, or a
/// flexible array that may start at the end of its structure.
#[derive(Clone, Copy)]
enum Kind {
    Pointer,
    Int,
    Byte,
    Array,
}

fn size_ok(size: u64, max: u64, what: &'static str) -> Result<(), Refused> {
    if size == 0 || size > max || !size.is_multiple_of(8) {
        Err(Refused::Implausible(what))
    } else {
        Ok(())
    }
}

fn field_ok(offset: u64, kind: Kind, size: u64, what: &'static str) -> Result<(), Refused> {
    let (width, align) = match kind {
        Kind::Pointer => (8, 8),
        Kind::Int => (4, 4),
        Kind::Byte => (1, 1),
        Kind::Array => (0, 1),
    };
    // `size` is at most MAX_STATE_SIZE here, so this cannot overflow.
    if !offset.is_multiple_of(align) || offset.saturating_add(width) > size {
        Err(Refused::Implausible(what))
    } else {
        Ok(())
    }
}

fn check(d: &DebugOffsets) -> Result<(), Refused> {
    size_ok(d.runtime_size, MAX_STATE_SIZE, "runtime size")?;
    size_ok(d.interpreter_size, MAX_STATE_SIZE, "interpreter size")?;
    for (size, what) in [
        (d.thread_size, "thread state size"),
        (d.frame_size, "frame size"),
        (d.code_size, "code object size"),
        (d.object_size, "object size"),
        (d.type_size, "type size"),
        (d.tuple_size, "tuple size"),
        (d.list_size, "list size"),
        (d.dict_size, "dict size"),
        (d.float_size, "float size"),
        (d.long_size, "int size"),
        (d.bytes_size, "bytes size"),
        (d.unicode_size, "str size"),
    ] {
        size_ok(size, MAX_OBJECT_SIZE, what)?;
    }
    if d.object_ob_type != 8 || d.object_size != 16 {
        return Err(Refused::Implausible("PyObject is not {ob_refcnt, ob_type}"));
    }
    for (offset, kind, size, what) in state_fields(d).into_iter().chain(object_fields(d)) {
        field_ok(offset, kind, size, what)?;
    }
    objects_have_headers(d)
}

/// Where a field is, what it holds, the size of its structure, and its name.
type FieldCheck = (u64, Kind, u64, &'static str);

/// The fields of the runtime, interpreter and thread states and frames.
fn state_fields(d: &DebugOffsets) -> [FieldCheck; 14] {
    use Kind::*;
    let none = |o: Option<u64>| o.unwrap_or(0);
    [
        (
            d.runtime_interpreters_head,
            Pointer,
            d.runtime_size,
            "interpreters.head",
        ),
        (
            d.interpreter_next,
            Pointer,
            d.interpreter_size,
            "interpreter next",
        ),
        (
            d.interpreter_threads_head,
            Pointer,
            d.interpreter_size,
            "threads.head",
        ),
        (
            none(d.interpreter_threads_main),
            Pointer,
            d.interpreter_size,
            "threads.main",
        ),
        (d.thread_next, Pointer, d.thread_size, "thread next"),
        (d.thread_thread_id, Pointer, d.thread_size, "thread_id"),
        (
            d.thread_native_thread_id,
            Pointer,
            d.thread_size,
            "native_thread_id",
        ),
        (
            d.thread_current_frame,
            Pointer,
            d.thread_size,
            "current_frame",
        ),
        (d.frame_previous, Pointer, d.frame_size, "frame previous"),
        (d.frame_executable, Pointer, d.frame_size, "f_executable"),
        (d.frame_instr_ptr, Pointer, d.frame_size, "instr_ptr"),
        (d.frame_localsplus, Array, d.frame_size, "localsplus"),
        (d.frame_owner, Byte, d.frame_size, "frame owner"),
        (
            none(d.frame_stackpointer),
            Pointer,
            d.frame_size,
            "stackpointer",
        ),
    ]
}

/// The fields of code, type and other objects.
fn object_fields(d: &DebugOffsets) -> [FieldCheck; 24] {
    use Kind::*;
    let none = |o: Option<u64>| o.unwrap_or(0);
    [
        (d.code_filename, Pointer, d.code_size, "co_filename"),
        (d.code_name, Pointer, d.code_size, "co_name"),
        (none(d.code_qualname), Pointer, d.code_size, "co_qualname"),
        (d.code_linetable, Pointer, d.code_size, "co_linetable"),
        (d.code_firstlineno, Int, d.code_size, "co_firstlineno"),
        (d.code_argcount, Int, d.code_size, "co_argcount"),
        (
            d.code_localsplusnames,
            Pointer,
            d.code_size,
            "co_localsplusnames",
        ),
        (
            d.code_localspluskinds,
            Pointer,
            d.code_size,
            "co_localspluskinds",
        ),
        (
            d.code_co_code_adaptive,
            Array,
            d.code_size,
            "co_code_adaptive",
        ),
        (d.type_tp_name, Pointer, d.type_size, "tp_name"),
        (d.type_tp_flags, Pointer, d.type_size, "tp_flags"),
        (d.tuple_ob_item, Array, d.tuple_size, "tuple ob_item"),
        (d.tuple_ob_size, Pointer, d.tuple_size, "tuple ob_size"),
        (d.list_ob_item, Pointer, d.list_size, "list ob_item"),
        (d.list_ob_size, Pointer, d.list_size, "list ob_size"),
        (d.dict_ma_keys, Pointer, d.dict_size, "ma_keys"),
        (d.dict_ma_values, Pointer, d.dict_size, "ma_values"),
        (d.float_ob_fval, Pointer, d.float_size, "ob_fval"),
        (d.long_lv_tag, Pointer, d.long_size, "lv_tag"),
        (d.long_ob_digit, Array, d.long_size, "ob_digit"),
        (d.bytes_ob_size, Pointer, d.bytes_size, "bytes ob_size"),
        (d.bytes_ob_sval, Array, d.bytes_size, "ob_sval"),
        (
            d.unicode_state,
            Int,
            d.unicode_asciiobject_size,
            "str state",
        ),
        (
            d.unicode_length,
            Pointer,
            d.unicode_asciiobject_size,
            "str length",
        ),
    ]
}

/// Every object starts with a `PyObject` header, and `PyASCIIObject` fits
/// in `PyUnicodeObject`.
fn objects_have_headers(d: &DebugOffsets) -> Result<(), Refused> {
    for (offset, what) in [
        (d.tuple_ob_item, "tuple ob_item"),
        (d.list_ob_item, "list ob_item"),
        (d.dict_ma_keys, "ma_keys"),
        (d.float_ob_fval, "ob_fval"),
        (d.long_lv_tag, "lv_tag"),
        (d.bytes_ob_sval, "ob_sval"),
        (d.unicode_length, "str length"),
        (d.code_filename, "co_filename"),
        (d.type_tp_name, "tp_name"),
    ] {
        if offset < d.object_size {
            return Err(Refused::Implausible(what));
        }
    }
    if d.unicode_asciiobject_size > d.unicode_size || !d.unicode_asciiobject_size.is_multiple_of(8)
    {
        return Err(Refused::Implausible("PyASCIIObject size"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    /// The bytes of `_PyRuntime`'s initialiser in an ELF file.
    fn runtime_bytes(path: &str) -> Option<Vec<u8>> {
        let data = std::fs::read(path).ok()?;
        let elf = object::File::parse(&*data).ok()?;
        let symbol = elf
            .dynamic_symbols()
            .find(|s| s.name() == Ok("_PyRuntime") && !s.is_undefined())?;
        let address = symbol.address();
        let section = elf
            .sections()
            .find(|s| s.address() <= address && address < s.address().saturating_add(s.size()))?;
        let bytes = section.data().ok()?;
        let start = usize::try_from(address - section.address()).ok()?;
        let end = bytes.len().min(start + READ_SIZE);
        Some(bytes.get(start..end)?.to_vec())
    }

    /// The real 3.13.0 table. The expected numbers are what
    /// `gdb -batch -ex 'p/x _PyRuntime.debug_offsets' libpython3.13.so.1.0`
    /// printed for pyenv's 3.13.0 build.
    #[test]
    fn pyenv_3_13_0() {
        let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
        let path = format!("{root}/versions/3.13.0/lib/libpython3.13.so.1.0");
        if !std::path::Path::new(&path).exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{path} is missing");
            }
            eprintln!("skipped: {path} is missing");
            return;
        }
        let bytes = runtime_bytes(&path).expect("_PyRuntime in the library's data");
        let d = parse(&bytes).expect("3.13.0's table");
        assert_eq!(
            d,
            DebugOffsets {
                version_hex: 0x30d00f0,
                free_threaded: false,
                runtime_size: 0x452b8,
                runtime_interpreters_head: 0x278,
                interpreter_size: 0x2f998,
                interpreter_next: 0x1c60,
                interpreter_threads_head: 0x1cb0,
                interpreter_threads_main: None,
                thread_size: 0x130,
                thread_next: 0x8,
                thread_thread_id: 0x98,
                thread_native_thread_id: 0xa0,
                thread_current_frame: 0x48,
                frame_size: 0x50,
                frame_previous: 0x8,
                frame_executable: 0x0,
                frame_instr_ptr: 0x38,
                frame_localsplus: 0x48,
                frame_owner: 0x46,
                frame_stackpointer: None,
                code_size: 0xd0,
                code_filename: 0x70,
                code_name: 0x78,
                code_qualname: Some(0x80),
                code_linetable: 0x88,
                code_firstlineno: 0x44,
                code_argcount: 0x34,
                code_localsplusnames: 0x60,
                code_localspluskinds: 0x68,
                code_co_code_adaptive: 0xc8,
                object_size: 0x10,
                object_ob_type: 0x8,
                type_size: 0x1a0,
                type_tp_name: 0x18,
                type_tp_flags: 0xa8,
                tuple_size: 0x20,
                tuple_ob_item: 0x18,
                tuple_ob_size: 0x10,
                list_size: 0x28,
                list_ob_item: 0x18,
                list_ob_size: 0x10,
                dict_size: 0x30,
                dict_ma_keys: 0x20,
                dict_ma_values: 0x28,
                float_size: 0x18,
                float_ob_fval: 0x10,
                long_size: 0x20,
                long_lv_tag: 0x10,
                long_ob_digit: 0x18,
                bytes_size: 0x28,
                bytes_ob_size: 0x10,
                bytes_ob_sval: 0x20,
                unicode_size: 0x40,
                unicode_state: 0x20,
                unicode_length: 0x10,
                unicode_asciiobject_size: 0x28,
            }
        );
        // The table is all the format needs.
        assert_eq!(parse(&bytes[..Format::V3_13.table_len()]), Ok(d));
        assert_eq!(
            parse(&bytes[..Format::V3_13.table_len() - 1]),
            Err(Refused::TooShort)
        );
    }

    /// What 3.13.0 publishes is its table in `layout.rs`, field for field: the
    /// table was read from the debug info, the offsets from the interpreter.
    #[test]
    fn pyenv_3_13_0_publishes_its_table() {
        use crate::python::layout::{for_version, Layout};
        let Some(root) = crate::python::pyenv_root_for_tests() else {
            return;
        };
        let path = root.join("versions/3.13.0/lib/libpython3.13.so.1.0");
        let bytes = runtime_bytes(path.to_str().unwrap()).expect("_PyRuntime in 3.13.0");
        let published = parse(&bytes).expect("3.13.0's table");
        let table = for_version(3, 13).expect("a 3.13 table");
        assert_eq!(Layout::with_debug_offsets(table, &published), Some(*table));
    }

    /// A 3.14 interpreter needs no table of its own: its frames' code field is
    /// tagged, and its `owner` and tuple items moved.
    #[test]
    fn a_3_14_layout_comes_from_its_offsets() {
        use crate::python::layout::{for_version, EntryMarker, Layout};
        let table = for_version(3, 13).expect("a 3.13 table");
        let published = expected_3_14(0x030e00f0);
        let layout = Layout::with_debug_offsets(table, &published).expect("a usable layout");
        assert_eq!((layout.major, layout.minor), (3, 14));
        assert_eq!(layout.code_tag_bits, 3);
        assert_eq!(layout.frame.owner, Some(published.frame_owner as u32));
        assert_eq!(layout.entry, EntryMarker::ShimOwner(3));
        assert_eq!(layout.object.tuple_items, published.tuple_ob_item as u32);
        assert_eq!(
            layout.code.code_units,
            Some(published.code_co_code_adaptive as u32)
        );
        // What 3.14 does not publish comes from the newest table.
        assert_eq!(layout.object.dict_used, table.object.dict_used);
    }

    /// Builds a table: every `uint64_t` of `names` (the format's fields in
    /// declaration order, from the CPython header) set from `values`, 0
    /// when absent.
    fn table(names: &[&str], values: &[(&str, u64)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for name in names {
            if *name == "cookie" {
                bytes.extend_from_slice(COOKIE);
                continue;
            }
            let value = values
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v);
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// `_Py_DebugOffsets` of 3.14, as declared in 3.14's
    /// `Include/internal/pycore_debug_offsets.h` (checked on 3.14.10).
    const FIELDS_3_14: &[&str] = &[
        "cookie",
        "version",
        "free_threaded",
        "runtime_state.size",
        "runtime_state.finalizing",
        "runtime_state.interpreters_head",
        "interpreter_state.size",
        "interpreter_state.id",
        "interpreter_state.next",
        "interpreter_state.threads_head",
        "interpreter_state.threads_main",
        "interpreter_state.gc",
        "interpreter_state.imports_modules",
        "interpreter_state.sysdict",
        "interpreter_state.builtins",
        "interpreter_state.ceval_gil",
        "interpreter_state.gil_runtime_state",
        "interpreter_state.gil_runtime_state_enabled",
        "interpreter_state.gil_runtime_state_locked",
        "interpreter_state.gil_runtime_state_holder",
        "interpreter_state.code_object_generation",
        "interpreter_state.tlbc_generation",
        "thread_state.size",
        "thread_state.prev",
        "thread_state.next",
        "thread_state.interp",
        "thread_state.current_frame",
        "thread_state.thread_id",
        "thread_state.native_thread_id",
        "thread_state.datastack_chunk",
        "thread_state.status",
        "interpreter_frame.size",
        "interpreter_frame.previous",
        "interpreter_frame.executable",
        "interpreter_frame.instr_ptr",
        "interpreter_frame.localsplus",
        "interpreter_frame.owner",
        "interpreter_frame.stackpointer",
        "interpreter_frame.tlbc_index",
        "code_object.size",
        "code_object.filename",
        "code_object.name",
        "code_object.qualname",
        "code_object.linetable",
        "code_object.firstlineno",
        "code_object.argcount",
        "code_object.localsplusnames",
        "code_object.localspluskinds",
        "code_object.co_code_adaptive",
        "code_object.co_tlbc",
        "pyobject.size",
        "pyobject.ob_type",
        "type_object.size",
        "type_object.tp_name",
        "type_object.tp_repr",
        "type_object.tp_flags",
        "tuple_object.size",
        "tuple_object.ob_item",
        "tuple_object.ob_size",
        "list_object.size",
        "list_object.ob_item",
        "list_object.ob_size",
        "set_object.size",
        "set_object.used",
        "set_object.table",
        "set_object.mask",
        "dict_object.size",
        "dict_object.ma_keys",
        "dict_object.ma_values",
        "float_object.size",
        "float_object.ob_fval",
        "long_object.size",
        "long_object.lv_tag",
        "long_object.ob_digit",
        "bytes_object.size",
        "bytes_object.ob_size",
        "bytes_object.ob_sval",
        "unicode_object.size",
        "unicode_object.state",
        "unicode_object.length",
        "unicode_object.asciiobject_size",
        "gc.size",
        "gc.collecting",
        "gen_object.size",
        "gen_object.gi_name",
        "gen_object.gi_iframe",
        "gen_object.gi_frame_state",
        "llist_node.next",
        "llist_node.prev",
        "debugger_support.eval_breaker",
        "debugger_support.remote_debugger_support",
        "debugger_support.remote_debugging_enabled",
        "debugger_support.debugger_pending_call",
        "debugger_support.debugger_script_path",
        "debugger_support.debugger_script_path_size",
    ];

    /// 3.15's: 3.14's with fields inserted (after the field named first): the
    /// thread state grew inside, two groups were added.
    fn fields_3_15() -> Vec<&'static str> {
        let insertions: &[(&str, &[&'static str])] = &[
            (
                "thread_state.current_frame",
                &[
                    "thread_state.base_frame",
                    "thread_state.last_profiled_frame",
                    "thread_state.last_profiled_frame_seq",
                ],
            ),
            (
                "thread_state.status",
                &[
                    "thread_state.holds_gil",
                    "thread_state.gil_requested",
                    "thread_state.current_exception",
                    "thread_state.exc_state",
                    "err_stackitem.exc_value",
                ],
            ),
            (
                "type_object.tp_flags",
                &[
                    "type_object.tp_basicsize",
                    "type_object.tp_dictoffset",
                    "heap_type_object.size",
                    "heap_type_object.ht_cached_keys",
                ],
            ),
            (
                "unicode_object.asciiobject_size",
                &["unicode_object.compactunicodeobject_size"],
            ),
            (
                "gc.collecting",
                &[
                    "gc.frame",
                    "gc.generation_stats_size",
                    "gc.generation_stats",
                ],
            ),
        ];
        let mut fields = Vec::new();
        for &field in FIELDS_3_14 {
            fields.push(field);
            if let Some((_, after)) = insertions.iter().find(|(at, _)| *at == field) {
                fields.extend_from_slice(after);
            }
        }
        fields
    }

    /// Values shared by the 3.14 and 3.15 tables: those of Debian's
    /// 3.14.10 `_PyRuntime` initialiser (read with gdb's `x/gx`), except
    /// the version and where noted. Every value is distinct where it can
    /// be, so that a field read from a neighbour's slot shows.
    fn values_3_14(version: u64) -> Vec<(&'static str, u64)> {
        vec![
            ("version", version),
            ("runtime_state.size", 0x4d4c8),
            ("runtime_state.finalizing", 0x310),
            ("runtime_state.interpreters_head", 0x328),
            ("interpreter_state.size", 0x37248),
            ("interpreter_state.id", 0x1c70),
            ("interpreter_state.next", 0x1c68),
            ("interpreter_state.threads_head", 0x1cb0),
            ("interpreter_state.threads_main", 0x1cc0),
            ("interpreter_state.gc", 0x1cf0),
            ("interpreter_state.imports_modules", 0x1e08),
            ("interpreter_state.code_object_generation", 0x1f38),
            ("thread_state.size", 0x340),
            ("thread_state.next", 0x8),
            ("thread_state.interp", 0x10),
            ("thread_state.current_frame", 0x48),
            ("thread_state.thread_id", 0x98),
            ("thread_state.native_thread_id", 0xa0),
            ("thread_state.datastack_chunk", 0xe8),
            ("thread_state.status", 0x20),
            ("interpreter_frame.size", 0x58),
            ("interpreter_frame.previous", 0x8),
            ("interpreter_frame.executable", 0x0),
            ("interpreter_frame.instr_ptr", 0x38),
            ("interpreter_frame.localsplus", 0x50),
            ("interpreter_frame.owner", 0x4a),
            ("interpreter_frame.stackpointer", 0x40),
            ("code_object.size", 0xd8),
            ("code_object.filename", 0x70),
            ("code_object.name", 0x78),
            ("code_object.qualname", 0x80),
            ("code_object.linetable", 0x88),
            ("code_object.firstlineno", 0x44),
            ("code_object.argcount", 0x34),
            ("code_object.localsplusnames", 0x60),
            ("code_object.localspluskinds", 0x68),
            ("code_object.co_code_adaptive", 0xd0),
            ("pyobject.size", 0x10),
            ("pyobject.ob_type", 0x8),
            ("type_object.size", 0x1a0),
            ("type_object.tp_name", 0x18),
            ("type_object.tp_repr", 0x58),
            ("type_object.tp_flags", 0xa8),
            ("tuple_object.size", 0x28),
            ("tuple_object.ob_item", 0x20),
            ("tuple_object.ob_size", 0x10),
            // Really 0x28 / 0x18 / 0x10, as the tuple's: made distinct.
            ("list_object.size", 0x30),
            ("list_object.ob_item", 0x28),
            ("list_object.ob_size", 0x18),
            ("set_object.size", 0xc8),
            ("set_object.used", 0x18),
            ("dict_object.size", 0x30),
            ("dict_object.ma_keys", 0x20),
            ("dict_object.ma_values", 0x28),
            ("float_object.size", 0x18),
            ("float_object.ob_fval", 0x10),
            ("long_object.size", 0x20),
            ("long_object.lv_tag", 0x10),
            ("long_object.ob_digit", 0x18),
            // Really 0x28 / 0x10 / 0x20: made distinct from the dict's.
            ("bytes_object.size", 0x38),
            ("bytes_object.ob_size", 0x18),
            ("bytes_object.ob_sval", 0x21),
            ("unicode_object.size", 0x40),
            ("unicode_object.state", 0x20),
            ("unicode_object.length", 0x10),
            ("unicode_object.asciiobject_size", 0x28),
            ("gc.size", 0x108),
            ("gc.collecting", 0xc0),
            ("gen_object.size", 0xa0),
            ("debugger_support.remote_debugger_support", 0x130),
            ("debugger_support.debugger_script_path_size", 0x200),
        ]
    }

    fn expected_3_14(version_hex: u64) -> DebugOffsets {
        DebugOffsets {
            version_hex,
            free_threaded: false,
            runtime_size: 0x4d4c8,
            runtime_interpreters_head: 0x328,
            interpreter_size: 0x37248,
            interpreter_next: 0x1c68,
            interpreter_threads_head: 0x1cb0,
            interpreter_threads_main: Some(0x1cc0),
            thread_size: 0x340,
            thread_next: 0x8,
            thread_thread_id: 0x98,
            thread_native_thread_id: 0xa0,
            thread_current_frame: 0x48,
            frame_size: 0x58,
            frame_previous: 0x8,
            frame_executable: 0x0,
            frame_instr_ptr: 0x38,
            frame_localsplus: 0x50,
            frame_owner: 0x4a,
            frame_stackpointer: Some(0x40),
            code_size: 0xd8,
            code_filename: 0x70,
            code_name: 0x78,
            code_qualname: Some(0x80),
            code_linetable: 0x88,
            code_firstlineno: 0x44,
            code_argcount: 0x34,
            code_localsplusnames: 0x60,
            code_localspluskinds: 0x68,
            code_co_code_adaptive: 0xd0,
            object_size: 0x10,
            object_ob_type: 0x8,
            type_size: 0x1a0,
            type_tp_name: 0x18,
            type_tp_flags: 0xa8,
            tuple_size: 0x28,
            tuple_ob_item: 0x20,
            tuple_ob_size: 0x10,
            list_size: 0x30,
            list_ob_item: 0x28,
            list_ob_size: 0x18,
            dict_size: 0x30,
            dict_ma_keys: 0x20,
            dict_ma_values: 0x28,
            float_size: 0x18,
            float_ob_fval: 0x10,
            long_size: 0x20,
            long_lv_tag: 0x10,
            long_ob_digit: 0x18,
            bytes_size: 0x38,
            bytes_ob_size: 0x18,
            bytes_ob_sval: 0x21,
            unicode_size: 0x40,
            unicode_state: 0x20,
            unicode_length: 0x10,
            unicode_asciiobject_size: 0x28,
        }
    }

    #[test]
    fn layout_3_14() {
        assert_eq!(FIELDS_3_14.len() * 8, Format::V3_14.table_len());
        for version in [0x030e00f0, 0x030e0af0, 0x030e00c1] {
            let bytes = table(FIELDS_3_14, &values_3_14(version));
            assert_eq!(parse(&bytes), Ok(expected_3_14(version)), "{version:#x}");
        }
        // Pre-releases' tables may be shaped otherwise.
        let beta = table(FIELDS_3_14, &values_3_14(0x030e00b2));
        assert_eq!(
            parse(&beta),
            Err(Refused::UnknownFormat {
                major: 3,
                minor: 14
            })
        );
    }

    #[test]
    fn layout_3_15() {
        assert_eq!(fields_3_15().len() * 8, Format::V3_15.table_len());
        assert_eq!(READ_SIZE, Format::V3_15.table_len());
        // The 3.14 values in 3.15's slots, as far as they differ from
        // Debian's 3.15.2 only in value.
        let mut values = values_3_14(0x030f02f0);
        values.extend([
            ("thread_state.base_frame", 0x50),
            ("thread_state.last_profiled_frame", 0x58),
            ("thread_state.last_profiled_frame_seq", 0x60),
            ("thread_state.holds_gil", 0x24),
            ("type_object.tp_basicsize", 0x20),
            ("heap_type_object.size", 0x3b0),
            ("unicode_object.compactunicodeobject_size", 0x38),
            ("gc.frame", 0x78),
        ]);
        let bytes = table(&fields_3_15(), &values);
        assert_eq!(parse(&bytes), Ok(expected_3_14(0x030f02f0)));
        // A later version is read as 3.15.
        values[0].1 = 0x031000a1;
        let bytes = table(&fields_3_15(), &values);
        assert_eq!(parse(&bytes), Ok(expected_3_14(0x031000a1)));
    }

    /// A 3.15 table read as 3.14's, or the other way round, is refused: the
    /// checks catch a shifted shape.
    #[test]
    fn wrong_shape_refused() {
        let bytes = table(&fields_3_15(), &values_3_14(0x030f02f0));
        let mut as_3_14 = bytes.clone();
        as_3_14[8..16].copy_from_slice(&0x030e02f0u64.to_le_bytes());
        assert!(matches!(parse(&as_3_14), Err(Refused::Implausible(_))));
        let mut bytes = table(FIELDS_3_14, &values_3_14(0x030f02f0));
        bytes.resize(READ_SIZE, 0);
        assert!(matches!(parse(&bytes), Err(Refused::Implausible(_))));
        let mut bytes = table(FIELDS_3_14, &values_3_14(0x030d02f0));
        bytes.resize(READ_SIZE, 0);
        assert!(matches!(parse(&bytes), Err(Refused::Implausible(_))));
    }

    #[test]
    fn refusals() {
        let good = table(FIELDS_3_14, &values_3_14(0x030e00f0));
        assert_eq!(parse(&[]), Err(Refused::TooShort));
        assert_eq!(parse(b"xdebugpy"), Err(Refused::TooShort));
        assert_eq!(parse(&good[..100]), Err(Refused::TooShort));
        assert_eq!(
            parse(&good[..Format::V3_14.table_len() - 1]),
            Err(Refused::TooShort)
        );
        assert_eq!(parse(&[0u8; READ_SIZE]), Err(Refused::NoCookie));
        assert_eq!(parse(b"xdebugpz and more bytes"), Err(Refused::NoCookie));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(parse(&bad), Err(Refused::NoCookie));

        for (version, major, minor) in [(0x030c01f0, 3, 12), (0x040000f0, 4, 0), (0, 0, 0)] {
            let bytes = table(FIELDS_3_14, &values_3_14(version));
            assert_eq!(parse(&bytes), Err(Refused::UnknownFormat { major, minor }));
        }
        let bytes = table(FIELDS_3_14, &values_3_14(0x1_030e00f0));
        assert!(matches!(parse(&bytes), Err(Refused::UnknownFormat { .. })));

        let mut values = values_3_14(0x030e00f0);
        values.push(("free_threaded", 1));
        assert_eq!(
            parse(&table(FIELDS_3_14, &values)),
            Err(Refused::FreeThreaded)
        );
        values.pop();
        values.push(("free_threaded", 7));
        assert!(matches!(
            parse(&table(FIELDS_3_14, &values)),
            Err(Refused::Implausible(_))
        ));
        values.pop();

        // One absurd or misplaced value at a time.
        for (field, value) in [
            ("runtime_state.size", 0),
            ("runtime_state.size", u64::MAX),
            ("runtime_state.interpreters_head", u64::MAX),
            ("runtime_state.interpreters_head", 0x4d4c8),
            ("interpreter_state.size", 1 << 40),
            ("interpreter_state.threads_head", 0x1cb4),
            ("thread_state.size", 0x341),
            ("thread_state.current_frame", 0x340),
            ("thread_state.native_thread_id", u64::MAX - 3),
            ("interpreter_frame.size", 1 << 20),
            ("interpreter_frame.previous", 0x9),
            ("interpreter_frame.owner", 0x58),
            ("interpreter_frame.localsplus", 0x60),
            ("code_object.firstlineno", 0x45),
            ("code_object.filename", 0x1000),
            ("code_object.filename", 0x8),
            ("pyobject.ob_type", 0x18),
            ("pyobject.size", 0x20),
            ("unicode_object.asciiobject_size", 0x48),
            ("unicode_object.state", 0x28),
            ("tuple_object.ob_size", 0x28),
        ] {
            let mut values = values_3_14(0x030e00f0);
            values.retain(|(n, _)| *n != field);
            values.push((field, value));
            let result = parse(&table(FIELDS_3_14, &values));
            assert!(
                matches!(result, Err(Refused::Implausible(_))),
                "{field} = {value:#x}: {result:?}"
            );
        }
    }

    /// Random bytes, with and without a valid header, never panic.
    #[test]
    fn random_bytes_never_panic() {
        // xorshift64*: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let good = table(FIELDS_3_14, &values_3_14(0x030e00f0));
        let mut buffer = [0u8; READ_SIZE + 16];
        for round in 0..20_000 {
            let len = (next() as usize) % buffer.len();
            for byte in buffer.iter_mut() {
                *byte = next() as u8;
            }
            if round % 2 == 0 {
                buffer[..8].copy_from_slice(COOKIE);
                let minor = 13 + (next() % 4);
                let version = 0x0300_00f0 | (minor << 16);
                buffer[8..16].copy_from_slice(&version.to_le_bytes());
                buffer[16..24].fill(0);
            }
            if round % 4 == 1 {
                // A valid table with a few bytes flipped.
                buffer[..good.len()].copy_from_slice(&good);
                for _ in 0..4 {
                    let i = (next() as usize) % good.len();
                    buffer[i] ^= next() as u8;
                }
            }
            let _ = parse(&buffer[..len]);
        }
    }
}
