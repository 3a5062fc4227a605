//! Python objects read from another process: strings for names, and a
//! safe, bounded repr of local variables. Nothing here runs the target's
//! code: values are read from memory as laid out by [`ObjectLayout`], so
//! only simple types show their value and everything else its type (and
//! its length, for containers). Values and type names are the target's
//! choice: what is returned has control characters escaped.
use super::{
    layout::ObjectLayout,
    memory::{i32_at, u64_at, Memory},
};
use crate::text::{escape_controls_owned, is_control, push_escape};

/// Characters of a string value shown before it is cut.
const MAX_STR_CHARS: usize = 100;
/// Bytes of a bytes value shown before it is cut.
const MAX_BYTES: usize = 64;
/// Most characters read of a type name.
const MAX_TYPE_NAME: usize = 64;

// `tp_flags` bits that say which built-in container an object's type derives from.
const LIST_SUBCLASS: u64 = 1 << 25;
const TUPLE_SUBCLASS: u64 = 1 << 26;
const DICT_SUBCLASS: u64 = 1 << 29;

/// Reads a `str` object, at most `max_chars` characters of it. `None` if it
/// is not a compact string (the only kind 3.3+ creates) or is unreadable.
pub fn read_str(
    memory: &dyn Memory,
    layout: &ObjectLayout,
    address: u64,
    max_chars: usize,
) -> Option<(String, usize)> {
    let header = memory
        .read_vec(address, layout.str_state as usize + 4)
        .ok()?;
    let length = u64_at(&header, layout.str_length) as usize;
    let state = i32_at(&header, layout.str_state) as u32;
    let kind = ((state >> 2) & 7) as usize;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !compact || !matches!(kind, 1 | 2 | 4) {
        return None;
    }
    let data = if ascii {
        layout.str_ascii_data
    } else {
        layout.str_compact_data
    };
    let chars = length.min(max_chars);
    let bytes = memory.read_vec(address + data as u64, chars * kind).ok()?;
    let text = bytes
        .chunks_exact(kind)
        .map(|c| {
            let code = match kind {
                1 => c[0] as u32,
                2 => u16::from_le_bytes([c[0], c[1]]) as u32,
                _ => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            };
            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect();
    Some((text, length))
}

/// Reads a `bytes` object, at most `max` bytes of it, and its length.
pub fn read_bytes(
    memory: &dyn Memory,
    layout: &ObjectLayout,
    address: u64,
    max: usize,
) -> Option<(Vec<u8>, usize)> {
    let length = memory.read_u64(address + layout.ob_size as u64).ok()? as usize;
    let bytes = memory
        .read_vec(address + layout.bytes_data as u64, length.min(max))
        .ok()?;
    Some((bytes, length))
}

/// The items of a tuple, at most `max`.
pub fn read_tuple(
    memory: &dyn Memory,
    layout: &ObjectLayout,
    address: u64,
    max: usize,
) -> Option<Vec<u64>> {
    let length = memory.read_u64(address + layout.ob_size as u64).ok()? as usize;
    let bytes = memory
        .read_vec(address + layout.tuple_items as u64, 8 * length.min(max))
        .ok()?;
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// The object's type: its name and its `tp_flags`.
fn type_of(memory: &dyn Memory, layout: &ObjectLayout, address: u64) -> Option<(String, u64)> {
    let type_address = memory.read_u64(address + layout.ob_type as u64).ok()?;
    let name_address = memory.read_u64(type_address + layout.tp_name as u64).ok()?;
    let flags = memory
        .read_u64(type_address + layout.tp_flags as u64)
        .ok()?;
    let mut name = Vec::new();
    // Read in small pieces: the name may end just before unreadable memory.
    'read: for chunk in 0..MAX_TYPE_NAME / 16 {
        let mut bytes = [0u8; 16];
        if memory
            .read(name_address + 16 * chunk as u64, &mut bytes)
            .is_err()
        {
            break;
        }
        for b in bytes {
            if b == 0 {
                break 'read;
            }
            name.push(b);
        }
    }
    if name.is_empty() {
        return None;
    }
    // A class can be named anything, and its name shows in `<Name object at ...>`.
    let name = escape_controls_owned(String::from_utf8_lossy(&name).into_owned());
    Some((name, flags))
}

/// Whether the object at `address` is of the built-in type `name`
/// (`code`, for a frame's code object).
pub fn has_type(memory: &dyn Memory, layout: &ObjectLayout, address: u64, name: &str) -> bool {
    type_of(memory, layout, address).is_some_and(|(found, _)| found == name)
}

/// A short, Python-like repr of the object at `address`: the value of
/// `None`, bools, ints, floats, strings and bytes; the type and length of
/// lists, tuples, dicts and sets; the type and address of anything else.
pub fn repr(memory: &dyn Memory, layout: &ObjectLayout, address: u64) -> String {
    let Some((name, flags)) = type_of(memory, layout, address) else {
        return format!("<unreadable object at {address:#x}>");
    };
    let value = match name.as_str() {
        "NoneType" => Some("None".to_string()),
        "bool" => int_value(memory, layout, address).map(|v| {
            if v == 0 {
                "False".to_string()
            } else {
                "True".to_string()
            }
        }),
        "int" => int_value(memory, layout, address)
            .map(|v| v.to_string())
            .or_else(|| Some("<int too large to show>".to_string())),
        "float" => memory
            .read_u64(address + layout.float_value as u64)
            .ok()
            .map(|bits| float_repr(f64::from_bits(bits))),
        "str" => read_str(memory, layout, address, MAX_STR_CHARS)
            .map(|(text, length)| cut(quote_str(&text), length, MAX_STR_CHARS, "characters")),
        "bytes" => read_bytes(memory, layout, address, MAX_BYTES)
            .map(|(bytes, length)| cut(quote_bytes(&bytes), length, MAX_BYTES, "bytes")),
        // A variable closed over by an inner function: show what it holds.
        "cell" => memory
            .read_u64(address + layout.cell_ref as u64)
            .ok()
            .map(|inner| match inner {
                0 => "<empty cell>".to_string(),
                inner if inner == address => "<cell>".to_string(),
                inner => match type_of(memory, layout, inner) {
                    Some((name, _)) if name == "cell" => "<cell>".to_string(),
                    _ => repr(memory, layout, inner),
                },
            }),
        _ => None,
    };
    if let Some(value) = value {
        return value;
    }
    match container_length(memory, layout, address, &name, flags) {
        Some(length) => {
            let items = if length == 1 { "item" } else { "items" };
            format!("<{name} of {length} {items}>")
        }
        None => format!("<{name} object at {address:#x}>"),
    }
}

/// The number of items of a list, tuple, dict or set (or of a subclass).
fn container_length(
    memory: &dyn Memory,
    layout: &ObjectLayout,
    address: u64,
    name: &str,
    flags: u64,
) -> Option<u64> {
    let field = if flags & (LIST_SUBCLASS | TUPLE_SUBCLASS) != 0 {
        layout.ob_size
    } else if flags & DICT_SUBCLASS != 0 {
        layout.dict_used
    } else if matches!(name, "set" | "frozenset") {
        layout.set_used
    } else {
        return None;
    };
    memory.read_u64(address + field as u64).ok()
}

/// An int's value, if it fits in 120 bits (four 30-bit digits).
fn int_value(memory: &dyn Memory, layout: &ObjectLayout, address: u64) -> Option<i128> {
    let size = memory.read_u64(address + layout.ob_size as u64).ok()?;
    let (digits, negative) = if layout.long_tagged {
        // 3.12's `lv_tag`: the digit count above 3 bits of sign (0 positive, 1 zero, 2 negative).
        ((size >> 3) as usize, size & 3 == 2)
    } else {
        // `ob_size`: the digit count, negative for negative ints.
        ((size as i64).unsigned_abs() as usize, (size as i64) < 0)
    };
    if digits > 4 {
        return None;
    }
    let bytes = memory
        .read_vec(address + layout.long_digits as u64, 4 * digits)
        .ok()?;
    let magnitude = bytes.chunks_exact(4).rev().fold(0i128, |acc, d| {
        (acc << 30) | (u32::from_le_bytes(d.try_into().expect("4 bytes")) as i128)
    });
    Some(if negative { -magnitude } else { magnitude })
}

/// Like Python's `repr(float)`: the shortest digits that read back the same.
fn float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `Debug` is shortest-round-trip too; it writes 1e300 as Python
    // writes 1e+300.
    let text = format!("{value:?}");
    match text.split_once('e') {
        Some((mantissa, exponent)) if !exponent.starts_with('-') => {
            format!("{mantissa}e+{exponent}")
        }
        _ => text,
    }
}

/// `'text'`, escaped as Python would (double quotes when that avoids escaping).
fn quote_str(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            // The other controls, C1 too, as `\x1b` (what Python writes as well).
            c if is_control(c) => push_escape(&mut out, c),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `b'bytes'`, escaped as Python would.
fn quote_bytes(bytes: &[u8]) -> String {
    let mut out = String::from("b'");
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\'"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('\'');
    out
}

/// Marks a value cut at `shown` of its `length` units.
fn cut(quoted: String, length: usize, shown: usize, units: &str) -> String {
    if length > shown {
        format!("{quoted}... ({length} {units})")
    } else {
        quoted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::{layout::for_version, memory::fake::FakeMemory};

    const LONG_SUBCLASS: u64 = 1 << 24;
    const BYTES_SUBCLASS: u64 = 1 << 27;
    const UNICODE_SUBCLASS: u64 = 1 << 28;

    fn layout() -> ObjectLayout {
        for_version(3, 11).expect("3.11").object
    }

    /// A process image with one type object per built-in name we test.
    struct Image {
        memory: FakeMemory,
        next: u64,
    }

    impl Image {
        fn new() -> Self {
            Image {
                memory: FakeMemory::default(),
                next: 0x10_000,
            }
        }

        fn alloc(&mut self, bytes: Vec<u8>) -> u64 {
            let at = self.next;
            self.next += (bytes.len() as u64 + 0xff) & !0xff;
            self.memory.put(at, bytes);
            at
        }

        fn type_object(&mut self, name: &str, flags: u64) -> u64 {
            let mut text = name.as_bytes().to_vec();
            text.push(0);
            text.resize(64, 0);
            let name_at = self.alloc(text);
            let mut bytes = vec![0u8; 0xb0];
            bytes[0x18..0x20].copy_from_slice(&name_at.to_le_bytes());
            bytes[0xa8..0xb0].copy_from_slice(&flags.to_le_bytes());
            self.alloc(bytes)
        }

        /// An object of type `name` whose bytes from 0x10 on are `body`.
        fn object(&mut self, name: &str, flags: u64, body: &[u8]) -> u64 {
            let type_at = self.type_object(name, flags);
            let mut bytes = vec![0u8; 0x10];
            bytes[8..16].copy_from_slice(&type_at.to_le_bytes());
            bytes.extend_from_slice(body);
            bytes.resize(bytes.len().max(0x60), 0);
            self.alloc(bytes)
        }

        fn ascii_str(&mut self, text: &str) -> u64 {
            let mut body = vec![0u8; 0x20];
            body[0..8].copy_from_slice(&(text.len() as u64).to_le_bytes());
            // state at 0x20: compact | ascii | kind 1.
            body[0x10..0x14].copy_from_slice(&((1u32 << 2) | (1 << 5) | (1 << 6)).to_le_bytes());
            body.extend_from_slice(text.as_bytes());
            body.push(0);
            self.object("str", UNICODE_SUBCLASS, &body)
        }

        fn repr(&self, address: u64) -> String {
            repr(&self.memory, &layout(), address)
        }
    }

    fn int_body(size: i64, digits: &[u32]) -> Vec<u8> {
        let mut body = size.to_le_bytes().to_vec();
        for d in digits {
            body.extend_from_slice(&d.to_le_bytes());
        }
        body
    }

    #[test]
    fn simple_values_show_as_python_shows_them() {
        let mut image = Image::new();
        let none = image.object("NoneType", 0, &[]);
        let yes = image.object("bool", LONG_SUBCLASS, &int_body(1, &[1]));
        let no = image.object("bool", LONG_SUBCLASS, &int_body(0, &[]));
        let three = image.object("int", LONG_SUBCLASS, &int_body(1, &[3]));
        let big = image.object("int", LONG_SUBCLASS, &int_body(-2, &[5, 1]));
        let half = image.object("float", 0, &0.5f64.to_le_bytes());
        let huge = image.object("float", 0, &1e300f64.to_le_bytes());
        let text = image.ascii_str("it's");
        let mut bytes_body = 2u64.to_le_bytes().to_vec();
        bytes_body.extend_from_slice(&[0; 8]);
        bytes_body.extend_from_slice(b"x\x00");
        let bytes = image.object("bytes", BYTES_SUBCLASS, &bytes_body);
        assert_eq!(image.repr(none), "None");
        assert_eq!(image.repr(yes), "True");
        assert_eq!(image.repr(no), "False");
        assert_eq!(image.repr(three), "3");
        assert_eq!(image.repr(big), (-((1i64 << 30) + 5)).to_string());
        assert_eq!(image.repr(half), "0.5");
        assert_eq!(image.repr(huge), "1e+300");
        assert_eq!(image.repr(text), "\"it's\"");
        assert_eq!(image.repr(bytes), "b'x\\x00'");
    }

    #[test]
    fn ints_of_3_12_and_later_carry_their_sign_in_a_tag() {
        let mut image = Image::new();
        let tagged = ObjectLayout {
            long_tagged: true,
            ..layout()
        };
        // lv_tag: digit count << 3, then 0 positive, 1 zero, 2 negative.
        let five = image.object("int", LONG_SUBCLASS, &int_body(1 << 3, &[5]));
        let zero = image.object("int", LONG_SUBCLASS, &int_body(1, &[0]));
        let big = image.object("int", LONG_SUBCLASS, &int_body((2 << 3) | 2, &[5, 1]));
        let yes = image.object("bool", LONG_SUBCLASS, &int_body(1 << 3, &[1]));
        let repr = |address| repr(&image.memory, &tagged, address);
        assert_eq!(repr(five), "5");
        assert_eq!(repr(zero), "0");
        assert_eq!(repr(big), (-((1i64 << 30) + 5)).to_string());
        assert_eq!(repr(yes), "True");
    }

    #[test]
    fn only_code_objects_are_taken_for_code() {
        let mut image = Image::new();
        let code = image.object("code", 0, &[]);
        let text = image.ascii_str("not code");
        assert!(has_type(&image.memory, &layout(), code, "code"));
        assert!(!has_type(&image.memory, &layout(), text, "code"));
        assert!(!has_type(&image.memory, &layout(), 0x42, "code"));
    }

    #[test]
    fn containers_show_type_and_length_and_others_their_type() {
        let mut image = Image::new();
        let list = image.object("list", LIST_SUBCLASS, &3u64.to_le_bytes());
        let mine = image.object("MyDict", DICT_SUBCLASS, &1u64.to_le_bytes());
        let mut set_body = vec![0u8; 8];
        set_body.extend_from_slice(&0u64.to_le_bytes());
        let set = image.object("set", 0, &set_body);
        let other = image.object("Widget", 0, &[]);
        assert_eq!(image.repr(list), "<list of 3 items>");
        assert_eq!(image.repr(mine), "<MyDict of 1 item>");
        assert_eq!(image.repr(set), "<set of 0 items>");
        assert_eq!(image.repr(other), format!("<Widget object at {other:#x}>"));
        assert_eq!(image.repr(0x42), "<unreadable object at 0x42>");
    }

    #[test]
    fn controls_in_values_and_type_names_are_escaped() {
        let mut image = Image::new();
        let text = image.ascii_str("a\x1b[2J\r\n\x07");
        let evil = image.object("Evil\x1b]0;pwned\x07", 0, &[]);
        assert_eq!(image.repr(text), "'a\\x1b[2J\\r\\n\\x07'");
        assert_eq!(
            image.repr(evil),
            format!("<Evil\\x1b]0;pwned\\x07 object at {evil:#x}>")
        );
    }

    #[test]
    fn long_strings_are_cut() {
        let mut image = Image::new();
        let long = image.ascii_str(&"a".repeat(150));
        let shown = image.repr(long);
        assert!(
            shown.starts_with(&format!("'{}'", "a".repeat(100))),
            "{shown}"
        );
        assert!(shown.ends_with("... (150 characters)"), "{shown}");
    }
}
