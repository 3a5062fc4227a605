//! Addresses to function, file and line, with blazesym. The only module that
//! touches blazesym.
//!
//! User addresses arrive as (module, file offset) pairs, so one library is
//! symbolized once for every process that maps it, and a process that has
//! exited can still be symbolized from its files. Each address is looked up
//! once per run and cached. An address that cannot be resolved is not an
//! error: it becomes [`Resolved::unknown`] with the reason.
use std::{collections::HashMap, path::Path, sync::Arc};

use blazesym::symbolize::{
    source::{Elf, Kernel, Source},
    Input, Reason, Sym, Symbolized, Symbolizer as Blazesym,
};

use crate::process::Module;

/// One function at an address; several when calls were inlined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Demangled function name.
    pub function: String,
    /// Source file, when debug info has it.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// True for a function inlined into the one before it.
    pub inlined: bool,
}

/// What an address resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The functions at the address, outermost (the real frame) first, then
    /// each inlined call in nesting order.
    Symbols(Vec<Symbol>),
    /// No symbol; why.
    Unknown(String),
}

pub struct Symbolizer {
    blazesym: Blazesym,
    user: HashMap<(usize, u64), Arc<Resolved>>,
    kernel: HashMap<u64, Arc<Resolved>>,
    /// Each module's build id in hex, read once (pprof mappings carry it).
    build_ids: HashMap<usize, Option<String>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        // Inlined functions and source lines cost DWARF parsing once per module,
        // which is what makes the tracebacks readable.
        let blazesym = Blazesym::builder()
            .enable_inlined_fns(true)
            .enable_code_info(true)
            .build();
        Symbolizer {
            blazesym,
            user: HashMap::new(),
            kernel: HashMap::new(),
            build_ids: HashMap::new(),
        }
    }

    /// Resolves the file offsets of `module` not seen before.
    pub fn resolve_user(&mut self, module: &Module, offsets: &[u64]) {
        self.build_ids.entry(module.id).or_insert_with(|| {
            // A file without the note, or one that cannot be read, simply has none.
            match blazesym::helper::read_elf_build_id(&module.open_path) {
                Ok(Some(id)) => Some(id.iter().map(|b| format!("{b:02x}")).collect()),
                _ => None,
            }
        });
        let mut new: Vec<u64> = offsets
            .iter()
            .copied()
            .filter(|o| !self.user.contains_key(&(module.id, *o)))
            .collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return;
        }
        let source = Source::Elf(Elf::new(&module.open_path));
        let results = self.lookup(&source, Input::FileOffset(&new), &module.open_path);
        for (offset, resolved) in new.into_iter().zip(results) {
            self.user.insert((module.id, offset), Arc::new(resolved));
        }
    }

    /// Resolves the kernel addresses not seen before.
    pub fn resolve_kernel(&mut self, addresses: &[u64]) {
        let mut new: Vec<u64> = addresses
            .iter()
            .copied()
            .filter(|a| !self.kernel.contains_key(a))
            .collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return;
        }
        let source = Source::Kernel(Kernel::default());
        let results = self.lookup(&source, Input::AbsAddr(&new), Path::new("/proc/kallsyms"));
        for (address, resolved) in new.into_iter().zip(results) {
            self.kernel.insert(address, Arc::new(resolved));
        }
    }

    /// A user address resolved earlier by [`Self::resolve_user`].
    pub fn user(&self, module: &Module, offset: u64) -> Option<Arc<Resolved>> {
        self.user.get(&(module.id, offset)).cloned()
    }

    /// The build id of a module passed to [`Self::resolve_user`], in hex.
    pub fn build_id(&self, module: &Module) -> Option<String> {
        self.build_ids.get(&module.id).cloned().flatten()
    }

    /// A kernel address resolved earlier by [`Self::resolve_kernel`].
    pub fn kernel(&self, address: u64) -> Option<Arc<Resolved>> {
        self.kernel.get(&address).cloned()
    }

    fn lookup(&self, source: &Source<'_>, input: Input<&[u64]>, what: &Path) -> Vec<Resolved> {
        let count = match input {
            Input::AbsAddr(a) | Input::VirtOffset(a) | Input::FileOffset(a) => a.len(),
        };
        match self.blazesym.symbolize(source, input) {
            Ok(symbolized) => symbolized.into_iter().map(convert).collect(),
            Err(error) => {
                // The whole source failed (unreadable file): every address says so.
                let reason = format!("cannot read {}: {error}", what.display());
                vec![Resolved::Unknown(reason); count]
            }
        }
    }
}

fn convert(symbolized: Symbolized<'_>) -> Resolved {
    match symbolized {
        Symbolized::Sym(sym) => Resolved::Symbols(symbols(sym)),
        Symbolized::Unknown(reason) => Resolved::Unknown(describe(reason).to_string()),
    }
}

fn symbols(sym: Sym<'_>) -> Vec<Symbol> {
    let location = |info: Option<&blazesym::symbolize::CodeInfo<'_>>| match info {
        Some(info) => (
            Some(info.to_path().to_string_lossy().into_owned()),
            info.line,
        ),
        None => (None, None),
    };
    let (file, line) = location(sym.code_info.as_deref());
    let mut out = vec![Symbol {
        function: sym.name.into_owned(),
        file,
        line,
        inlined: false,
    }];
    for inlined in sym.inlined.iter() {
        let (file, line) = location(inlined.code_info.as_ref());
        out.push(Symbol {
            function: inlined.name.to_string(),
            file,
            line,
            inlined: true,
        });
    }
    out
}

fn describe(reason: Reason) -> &'static str {
    match reason {
        Reason::Unmapped => "not mapped",
        Reason::InvalidFileOffset => "offset not in any code section",
        Reason::MissingComponent => "no file behind the mapping",
        Reason::MissingSyms => "no symbols (stripped)",
        Reason::Unsupported => "unsupported module type",
        Reason::UnknownAddr => "no symbol covers the address",
        Reason::IgnoredError => "symbolization failed",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Location, ProcessTable};

    #[inline(never)]
    #[no_mangle]
    extern "C" fn tripod_symbolize_test_marker() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn resolves_a_function_of_our_own_binary() {
        let mut table = ProcessTable::new();
        let pid = std::process::id();
        table.observe(pid, "test");
        let address = tripod_symbolize_test_marker as extern "C" fn() -> u64 as usize as u64;
        let Location::File {
            module,
            file_offset,
        } = table.locate(pid, address)
        else {
            panic!("our own code is not in a file mapping");
        };
        let mut symbolizer = Symbolizer::new();
        symbolizer.resolve_user(&module, &[file_offset, file_offset]);
        match &*symbolizer.user(&module, file_offset).unwrap() {
            Resolved::Symbols(symbols) => {
                assert_eq!(symbols[0].function, "tripod_symbolize_test_marker");
                // Test binaries carry line info only in debug builds.
                if let Some(file) = &symbols[0].file {
                    assert!(file.ends_with("symbolize.rs"), "{file}");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_addresses_are_data_not_errors() {
        let mut symbolizer = Symbolizer::new();
        symbolizer.resolve_kernel(&[1]);
        assert!(matches!(
            &*symbolizer.kernel(1).unwrap(),
            Resolved::Unknown(_)
        ));
    }
}
