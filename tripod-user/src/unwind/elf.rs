//! The parts of an ELF file the unwinder needs: its unwind sections, copied
//! out once per run, and its loadable segments, to place the file in a
//! process's address space.
//!
//! Only headers and the few unwind sections are read (through
//! [`object::ReadCache`]), never the whole file, so large binaries with debug
//! info cost little.
use std::{fs::File, ops::Range, sync::Arc};

use framehop::ExplicitModuleSectionInfo;
use object::{
    elf::{self, FileHeader64},
    read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _},
    Endianness, ReadCache, ReadRef,
};

/// Section bytes, shared by every process that maps the file.
pub(super) type Bytes = Arc<[u8]>;

/// Page size used by the kernel on x86_64: mappings start on page boundaries.
const PAGE: u64 = 0x1000;

/// A `PT_LOAD` program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

/// The load bias of a mapping of a file with these `PT_LOAD` segments (see
/// [`UnwindFile::bias`]); shared with the Python detection, which places
/// `_PyRuntime` the same way.
pub(crate) fn load_bias(loads: &[LoadSegment], start: u64, file_offset: u64) -> Option<u64> {
    // The segment whose page-aligned file range holds the mapped offset;
    // an executable one first when a page is shared by two segments.
    let covers = |l: &&LoadSegment| {
        l.offset & !(PAGE - 1) <= file_offset && file_offset < l.offset.saturating_add(l.filesz)
    };
    let segment = loads.iter().filter(covers).max_by_key(|l| l.executable)?;
    // In that segment, file offset o is at SVMA vaddr - offset + o.
    let svma_at_start = segment
        .vaddr
        .wrapping_sub(segment.offset)
        .wrapping_add(file_offset);
    Some(start.wrapping_sub(svma_at_start))
}

/// A section's stated address range (SVMA) and its bytes.
#[derive(Clone, Debug)]
pub(crate) struct Section {
    pub svma: Range<u64>,
    pub data: Bytes,
}

/// Unwind data of one ELF file, independent of where it is mapped.
#[derive(Debug)]
pub(crate) struct UnwindFile {
    /// The lowest `PT_LOAD` address rounded down to a page: 0 for PIE and
    /// shared libraries, the link address (e.g. 0x400000) for non-PIE executables.
    pub base_svma: u64,
    pub loads: Vec<LoadSegment>,
    pub text_svma: Option<Range<u64>>,
    pub got_svma: Option<Range<u64>>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    /// Only read when there is no `.eh_frame` (framehop prefers `.eh_frame`).
    pub debug_frame: Option<Bytes>,
    /// The ELF entry point (`e_entry`), if the file has one: where the first
    /// thread of a program (and the dynamic loader before it) begins.
    pub entry_svma: Option<u64>,
}

impl UnwindFile {
    /// Bytes of unwind tables kept (for a debug log).
    pub fn size(&self) -> usize {
        let section = |s: &Option<Section>| s.as_ref().map_or(0, |s| s.data.len());
        section(&self.eh_frame)
            + section(&self.eh_frame_hdr)
            + self.debug_frame.as_ref().map_or(0, |d| d.len())
    }

    /// Reads the unwind data of an x86_64 ELF file. `None` when it cannot
    /// be read, is not a 64-bit x86_64 ELF, or has no unwind data.
    pub fn read(file: File) -> Option<UnwindFile> {
        let cache = ReadCache::new(file);
        Self::parse(&cache)
    }

    /// The unwind data of the vDSO, read from our own process: every 64-bit
    /// process on this kernel maps the same image.
    pub fn vdso() -> Option<UnwindFile> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let line = maps.lines().find(|l| l.ends_with(" [vdso]"))?;
        let (start, end) = line.split_whitespace().next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        // SAFETY: the kernel maps the vDSO readable for the life of the process.
        let image =
            unsafe { std::slice::from_raw_parts(start as *const u8, end.checked_sub(start)?) };
        Self::parse(image)
    }

    fn parse<'data, R: ReadRef<'data>>(data: R) -> Option<UnwindFile> {
        let header = FileHeader64::<Endianness>::parse(data).ok()?;
        let endian = header.endian().ok()?;
        if header.e_machine(endian) != elf::EM_X86_64 || endian != Endianness::Little {
            return None;
        }
        let loads: Vec<LoadSegment> = header
            .program_headers(endian, data)
            .ok()?
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .map(|ph| LoadSegment {
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                executable: ph.p_flags(endian) & elf::PF_X != 0,
            })
            .collect();
        let base_svma = loads.iter().map(|l| l.vaddr).min()? & !(PAGE - 1);

        let sections = header.sections(endian, data).ok()?;
        let section = |name: &[u8]| -> Option<Section> {
            let (_, sh) = sections.section_by_name(endian, name)?;
            let bytes = section_bytes(sh, endian, data)?;
            let start = sh.sh_addr(endian);
            Some(Section {
                svma: start..start.saturating_add(bytes.len() as u64),
                data: bytes,
            })
        };
        let svma = |name: &[u8]| -> Option<Range<u64>> {
            let (_, sh) = sections.section_by_name(endian, name)?;
            let start = sh.sh_addr(endian);
            Some(start..start.saturating_add(sh.sh_size(endian)))
        };

        let eh_frame = section(b".eh_frame");
        let eh_frame_hdr = eh_frame.as_ref().and_then(|_| section(b".eh_frame_hdr"));
        let debug_frame = match eh_frame {
            Some(_) => None,
            None => section(b".debug_frame").map(|s| s.data),
        };
        if eh_frame.is_none() && debug_frame.is_none() {
            return None;
        }
        Some(UnwindFile {
            base_svma,
            loads,
            text_svma: svma(b".text"),
            got_svma: svma(b".got"),
            eh_frame,
            eh_frame_hdr,
            debug_frame,
            entry_svma: Some(header.e_entry(endian)).filter(|&entry| entry != 0),
        })
    }

    /// The load bias of a mapping of this file: what to add to an address
    /// stated in the file (SVMA) to get the address in the process (AVMA).
    /// `start` is where the mapping begins and `file_offset` the file offset
    /// mapped there. 0 for non-PIE executables; the mapping's base for PIE
    /// and libraries. `None` when no loadable segment covers the offset.
    pub fn bias(&self, start: u64, file_offset: u64) -> Option<u64> {
        load_bias(&self.loads, start, file_offset)
    }

    /// Framehop's description of the file; cheap (shares the bytes).
    pub fn section_info(&self) -> ExplicitModuleSectionInfo<Bytes> {
        ExplicitModuleSectionInfo {
            base_svma: self.base_svma,
            text_svma: self.text_svma.clone(),
            got_svma: self.got_svma.clone(),
            eh_frame_svma: self.eh_frame.as_ref().map(|s| s.svma.clone()),
            eh_frame: self.eh_frame.as_ref().map(|s| s.data.clone()),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
            debug_frame: self.debug_frame.clone(),
            ..Default::default()
        }
    }
}

/// The bytes of a section present in the file; `None` for empty, `NOBITS`
/// (stripped into a debug file) and compressed sections.
fn section_bytes<'data, R: ReadRef<'data>>(
    sh: &elf::SectionHeader64<Endianness>,
    endian: Endianness,
    data: R,
) -> Option<Bytes> {
    if sh.sh_type(endian) == elf::SHT_NOBITS
        || sh.sh_flags(endian) & u64::from(elf::SHF_COMPRESSED) != 0
    {
        return None;
    }
    let bytes = sh.data(endian, data).ok()?;
    (!bytes.is_empty()).then(|| Arc::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn file(loads: Vec<LoadSegment>) -> UnwindFile {
        UnwindFile {
            base_svma: loads.iter().map(|l| l.vaddr).min().unwrap() & !(PAGE - 1),
            loads,
            text_svma: None,
            got_svma: None,
            eh_frame: None,
            eh_frame_hdr: None,
            debug_frame: None,
            entry_svma: None,
        }
    }

    fn load(vaddr: u64, offset: u64, filesz: u64, executable: bool) -> LoadSegment {
        LoadSegment {
            vaddr,
            offset,
            filesz,
            executable,
        }
    }

    #[test]
    fn bias_of_pie_and_non_pie_mappings() {
        // A PIE: read-only headers, then text at a different vaddr than its offset.
        let pie = file(vec![
            load(0, 0, 0x5000, false),
            load(0x6000, 0x5000, 0x20000, true),
        ]);
        // r-xp 00005000 mapped at 0x5555_5555_b000: file offset 0x5000 is vaddr 0x6000.
        assert_eq!(pie.bias(0x5555_5555_b000, 0x5000), Some(0x5555_5555_5000));
        assert_eq!(pie.base_svma, 0);

        // A non-PIE executable linked at 0x400000: no bias.
        let exe = file(vec![
            load(0x400000, 0, 0x1000, false),
            load(0x401000, 0x1000, 0x8000, true),
        ]);
        assert_eq!(exe.bias(0x401000, 0x1000), Some(0));
        assert_eq!(exe.base_svma, 0x400000);

        // A segment whose offset is not page-aligned: the mapping starts at the page below.
        let odd = file(vec![load(0x1_1e40, 0x1e40, 0x3000, true)]);
        assert_eq!(odd.bias(0x7f00_0001_1000, 0x1000), Some(0x7f00_0000_0000));

        // No segment holds the offset.
        assert_eq!(exe.bias(0x500000, 0x100000), None);
    }

    #[test]
    fn reads_our_own_executable() {
        let exe = std::env::current_exe().unwrap();
        let open = |path: &Path| File::open(path).unwrap();
        let file = UnwindFile::read(open(&exe)).expect("our test binary has .eh_frame");
        assert!(file.eh_frame.is_some());
        assert!(file.eh_frame_hdr.is_some());
        assert!(file.loads.iter().any(|l| l.executable));
        assert!(UnwindFile::read(open(Path::new("/proc/self/status"))).is_none());
    }

    #[test]
    fn reads_the_vdso() {
        let vdso = UnwindFile::vdso().expect("x86_64 Linux maps a vDSO with .eh_frame");
        assert!(vdso.eh_frame.is_some());
        // Mapped from offset 0 of its image, at its stated base.
        assert_eq!(
            vdso.bias(0x7fff_0000_0000, 0),
            Some(0x7fff_0000_0000 - vdso.base_svma)
        );
    }
}
