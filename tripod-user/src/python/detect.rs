//! Is a process running CPython, which version, and where are the two
//! things we need from it: `_PyRuntime` (where the eBPF program starts its
//! walk) and `_PyEval_EvalFrameDefault` (the native frames Python frames
//! replace)? Answered from the process's mappings and the dynamic symbols of
//! `libpython3.X.so` or of the executable, each file read once per run.
use std::{fs::File, ops::Range};

use object::{
    elf::PF_X, Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, ReadCache,
    SegmentFlags,
};

use crate::{
    process::MappingView,
    unwind::{load_bias, LoadSegment},
};

/// What a Python binary (a libpython or an executable with the interpreter
/// linked in) says about itself, independent of where it is mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binary {
    pub major: u8,
    pub minor: u8,
    /// Link-time address of `_PyRuntime`; in 3.6, which has none, of the
    /// static `interp_head` (the list of interpreters), from `.symtab`.
    runtime: u64,
    /// Link-time addresses of `_PyEval_EvalFrameDefault`.
    eval: Range<u64>,
    /// Its `PT_LOAD` segments, to place it in a process.
    segments: Vec<LoadSegment>,
}

/// A Python binary as mapped in one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub major: u8,
    pub minor: u8,
    /// Address of `_PyRuntime` (3.6: `interp_head`) in the process.
    pub runtime: u64,
    /// Addresses of `_PyEval_EvalFrameDefault` in the process.
    pub eval: Range<u64>,
}

impl Binary {
    /// Reads the symbols of a binary; `None` if it is not a Python binary.
    /// `file_name` gives the version when the binary has no `Py_Version`.
    pub fn read(file: File, file_name: &str) -> Option<Binary> {
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache).ok()?;
        let mut runtime = None;
        let mut eval = None;
        let mut version = None;
        // Defined symbols only: an executable that links libpython lists
        // what it imports from it too, at address 0.
        for symbol in elf.dynamic_symbols().filter(|s| !s.is_undefined()) {
            match symbol.name() {
                Ok("_PyRuntime") => runtime = Some(symbol.address()),
                Ok("_PyEval_EvalFrameDefault") => {
                    eval = Some(symbol.address()..symbol.address() + symbol.size().max(1))
                }
                Ok("Py_Version") => {
                    version = symbol
                        .section_index()
                        .and_then(|index| elf.section_by_index(index).ok())
                        .and_then(|section| section.data_range(symbol.address(), 4).ok().flatten())
                        .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
                        .map(|hex| (((hex >> 24) & 0xff) as u8, ((hex >> 16) & 0xff) as u8))
                }
                _ => {}
            }
        }
        let (major, minor) = version.or_else(|| version_from_name(file_name))?;
        // 3.6 has no `_PyRuntime`; its interpreters hang off a static variable,
        // which only an unstripped binary names.
        if runtime.is_none() && (major, minor) < (3, 7) {
            runtime = elf
                .symbols()
                .find(|s| s.name() == Ok("interp_head") && !s.is_undefined())
                .map(|s| s.address());
        }
        let segments = elf
            .segments()
            .map(|s| LoadSegment {
                vaddr: s.address(),
                offset: s.file_range().0,
                filesz: s.file_range().1,
                executable: matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0),
            })
            .collect();
        Some(Binary {
            major,
            minor,
            runtime: runtime?,
            eval: eval?,
            segments,
        })
    }

    /// Where this binary lies in a process that maps it at `mapping`.
    pub fn place(&self, mapping: &MappingView) -> Option<Placed> {
        let bias = load_bias(&self.segments, mapping.start, mapping.file_offset)?;
        Some(Placed {
            major: self.major,
            minor: self.minor,
            runtime: self.runtime.wrapping_add(bias),
            eval: self.eval.start.wrapping_add(bias)..self.eval.end.wrapping_add(bias),
        })
    }
}

/// Whether a mapped file may hold the interpreter: a `libpython3.X.so`, or
/// the executable (Debian's `python3.11` links it in).
pub fn is_candidate(file_name: &str, is_executable: bool) -> bool {
    file_name.starts_with("libpython3.") || is_executable
}

/// `(3, 11)` from `libpython3.11.so.1.0` or `python3.11`.
fn version_from_name(file_name: &str) -> Option<(u8, u8)> {
    let at = file_name.find("python3.")? + "python3.".len();
    let digits: String = file_name[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((3, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn versions_come_from_file_names() {
        assert_eq!(version_from_name("libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(version_from_name("python3.9"), Some((3, 9)));
        assert_eq!(version_from_name("python3"), None);
        assert_eq!(version_from_name("bash"), None);
    }

    #[test]
    fn placing_applies_the_load_bias() {
        let binary = Binary {
            major: 3,
            minor: 11,
            runtime: 0x54_e540,
            eval: 0x1000..0x2000,
            segments: vec![
                LoadSegment {
                    vaddr: 0,
                    offset: 0,
                    filesz: 0x10_0000,
                    executable: false,
                },
                LoadSegment {
                    vaddr: 0x10_1000,
                    offset: 0x10_1000,
                    filesz: 0x20_0000,
                    executable: true,
                },
            ],
        };
        let mapping = MappingView {
            start: 0x7f00_0010_1000,
            end: 0x7f00_0030_0000,
            file_offset: 0x10_1000,
            module: None,
            special: None,
        };
        let placed = binary.place(&mapping).expect("placed");
        assert_eq!(placed.runtime, 0x7f00_0000_0000 + 0x54_e540);
        assert_eq!(placed.eval, 0x7f00_0000_1000..0x7f00_0000_2000);
    }

    #[test]
    fn pyenvs_3_6_is_found_by_its_interpreter_list() {
        let Some(root) = crate::python::pyenv_root_for_tests() else {
            return;
        };
        let path = root.join("versions/3.6.15/lib/libpython3.6m.so.1.0");
        if !path.exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{path:?} is missing in CI"
            );
            return;
        }
        let binary = Binary::read(File::open(&path).unwrap(), "libpython3.6m.so.1.0")
            .expect("a Python binary");
        assert_eq!((binary.major, binary.minor), (3, 6));
        assert_ne!(binary.runtime, 0);
    }

    #[test]
    fn this_machines_pythons_are_recognised() {
        // Whatever Python 3 this machine has; the end-to-end tests cover
        // the supported ones for real.
        for path in ["/usr/bin/python3.11"] {
            let path = Path::new(path);
            if !path.exists() {
                continue;
            }
            let binary =
                Binary::read(File::open(path).unwrap(), "python3.11").expect("a Python binary");
            assert_eq!((binary.major, binary.minor), (3, 11));
            assert!(binary.eval.end > binary.eval.start + 1000);
        }
        assert_eq!(Binary::read(File::open("/bin/sh").unwrap(), "sh"), None);
    }
}
