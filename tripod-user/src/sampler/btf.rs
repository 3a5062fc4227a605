//! Where fields of `struct task_struct` are in the running kernel, read from
//! its BTF (`/sys/kernel/btf/vmlinux`).
//!
//! C eBPF programs get these offsets from CO-RE relocations; Rust ones have
//! none, so the loader finds them and passes them in [`TaskOffsets`]. Only the
//! few parts of the BTF format needed to walk a struct's members are read
//! (see <https://docs.kernel.org/bpf/btf.html>).
use std::collections::HashMap;

use anyhow::{bail, ensure, Context as _, Result};
use tripod_common::TaskOffsets;

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
const MAGIC: u16 = 0xeb9f;

/// The offsets of the `task_struct` fields tripod's programs read.
pub fn task_offsets() -> Result<TaskOffsets> {
    let data = std::fs::read(VMLINUX)
        .with_context(|| format!("reading the kernel's BTF from {VMLINUX}"))?;
    let btf = Btf::parse(&data).with_context(|| format!("parsing {VMLINUX}"))?;
    let members = btf
        .struct_members("task_struct")
        .with_context(|| format!("finding struct task_struct in {VMLINUX}"))?;
    let field = |name: &str| {
        members
            .get(name)
            .copied()
            .with_context(|| format!("struct task_struct has no field {name} in {VMLINUX}"))
    };
    Ok(TaskOffsets {
        pid: field("pid")?,
        tgid: field("tgid")?,
        state: field("__state")?,
        comm: field("comm")?,
        // Only SMP kernels have it; without it, every thread looks off-CPU.
        on_cpu: field("on_cpu").unwrap_or(0),
        fsbase: fsbase(&btf, &members).unwrap_or(0),
    })
}

/// The offsets of the `struct file` fields the sideband probe reads (see
/// `tripod_common::probe`): the inode, device and name of a mapped file.
pub fn file_offsets() -> Result<tripod_common::probe::FileOffsets> {
    let data = std::fs::read(VMLINUX)
        .with_context(|| format!("reading the kernel's BTF from {VMLINUX}"))?;
    let btf = Btf::parse(&data).with_context(|| format!("parsing {VMLINUX}"))?;
    let field = |strukt: &str, name: &str| -> Result<u32> {
        let members = btf
            .struct_members(strukt)
            .with_context(|| format!("finding struct {strukt} in {VMLINUX}"))?;
        members
            .get(name)
            .copied()
            .with_context(|| format!("struct {strukt} has no field {name} in {VMLINUX}"))
    };
    Ok(tripod_common::probe::FileOffsets {
        file_inode: field("file", "f_inode")?,
        file_dentry: field("file", "f_path")? + field("path", "dentry")?,
        inode_ino: field("inode", "i_ino")?,
        inode_sb: field("inode", "i_sb")?,
        inode_generation: field("inode", "i_generation")?,
        sb_dev: field("super_block", "s_dev")?,
        dentry_name: field("dentry", "d_name")? + field("qstr", "name")?,
        task_files: field("task_struct", "files")?,
        files_fdt: field("files_struct", "fdt")?,
        fdtable_fd: field("fdtable", "fd")?,
        task_mm: field("task_struct", "mm")?,
        mm_start_code: field("mm_struct", "start_code")?,
        mm_end_code: field("mm_struct", "end_code")?,
        bprm_file: field("linux_binprm", "file")?,
    })
}

/// Whether the kernel knows the `bpf_loop` helper, which the
/// `--unwind tables` walk needs: its id, `BPF_FUNC_loop`, is in the
/// kernel's `enum bpf_func_id`. `None`: the BTF could not be read.
pub fn knows_bpf_loop() -> Option<bool> {
    let data = std::fs::read(VMLINUX).ok()?;
    let btf = Btf::parse(&data).ok()?;
    Some(btf.has_enumerator("bpf_func_id", "BPF_FUNC_loop"))
}

/// `task_struct.thread.fsbase` (x86_64): the TLS base, which CPython 3.6
/// and 3.7 thread states are matched against. `None` on other kernels.
fn fsbase(btf: &Btf, task_members: &HashMap<String, u32>) -> Option<u32> {
    let thread = *task_members.get("thread")?;
    let fsbase = *btf.struct_members("thread_struct").ok()?.get("fsbase")?;
    thread.checked_add(fsbase)
}

const KIND_STRUCT: u32 = 4;
const KIND_ENUM: u32 = 6;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// One entry of the type section.
struct Type {
    kind: u32,
    name: u32,
    /// Member count for structs and unions.
    vlen: u32,
    /// Member offsets are `bitfield_size << 24 | bit_offset`.
    kind_flag: bool,
    /// Referenced type for typedefs and modifiers.
    size_or_type: u32,
    /// Where the kind-specific data (the members) starts in the type section.
    data: usize,
}

struct Btf<'a> {
    /// Indexed by type id; id 0 is `void` and has no entry.
    types: Vec<Type>,
    type_section: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32> {
    let raw = bytes.get(at..at + 4).context("BTF is cut short")?;
    Ok(u32::from_le_bytes(raw.try_into().unwrap()))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Btf<'a>> {
        ensure!(data.len() >= 24, "BTF is cut short");
        let magic = u16::from_le_bytes([data[0], data[1]]);
        ensure!(magic == MAGIC, "not little-endian BTF (magic {magic:#x})");
        let header_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(header_len + off..header_len + off + len)
                .context("BTF section out of bounds")
        };
        let type_section = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;

        let mut types = Vec::new();
        let mut at = 0;
        while at < type_section.len() {
            let name = u32_at(type_section, at)?;
            let info = u32_at(type_section, at + 4)?;
            let size_or_type = u32_at(type_section, at + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let data = at + 12;
            // Bytes of kind-specific data after the 12-byte common part.
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl_tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen,           // enum, func_proto
                2 | 7..=12 | 16 | 18 => 0,    // ptr, fwd, typedef, modifiers, func, float, type_tag
                _ => bail!("unknown BTF kind {kind}"),
            };
            types.push(Type {
                kind,
                name,
                vlen,
                kind_flag: info >> 31 != 0,
                size_or_type,
                data,
            });
            at = data + extra as usize;
        }
        Ok(Btf {
            types,
            type_section,
            strings,
        })
    }

    fn name(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.types.get(i as usize))
    }

    /// Byte offsets of the named members of struct `name`, including those of
    /// anonymous structs and unions nested in it.
    fn struct_members(&self, name: &str) -> Result<HashMap<String, u32>> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name) == name)
            .context("no such struct")?;
        let mut members = HashMap::new();
        self.collect_members(id as u32 + 1, 0, &mut members, 0)?;
        Ok(members)
    }

    /// Whether enum `name` has a value named `value`.
    fn has_enumerator(&self, name: &str, value: &str) -> bool {
        let Some(ty) = self
            .types
            .iter()
            .find(|t| t.kind == KIND_ENUM && self.name(t.name) == name)
        else {
            return false;
        };
        // Each value is (name offset, value), 8 bytes.
        (0..ty.vlen as usize).any(|i| {
            u32_at(self.type_section, ty.data + 8 * i).is_ok_and(|n| self.name(n) == value)
        })
    }

    fn collect_members(
        &self,
        id: u32,
        base_bits: u32,
        out: &mut HashMap<String, u32>,
        depth: u32,
    ) -> Result<()> {
        ensure!(depth < 16, "struct nesting too deep");
        let ty = self.get(id).context("bad type id")?;
        for i in 0..ty.vlen as usize {
            let at = ty.data + 12 * i;
            let name = u32_at(self.type_section, at)?;
            let member_type = u32_at(self.type_section, at + 4)?;
            let raw_offset = u32_at(self.type_section, at + 8)?;
            let bits = base_bits
                + if ty.kind_flag {
                    raw_offset & 0xff_ffff
                } else {
                    raw_offset
                };
            if name != 0 {
                // Bitfields have no byte offset; none of ours is one.
                if bits.is_multiple_of(8) {
                    out.insert(self.name(name).to_string(), bits / 8);
                }
                continue;
            }
            let inner = self.resolve(member_type);
            if let Some(t) = self.get(inner) {
                if t.kind == KIND_STRUCT || t.kind == KIND_UNION {
                    self.collect_members(inner, bits, out, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// Follows typedefs and qualifiers to the type underneath.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_struct_fields_are_found_in_this_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("skipped: {VMLINUX} does not exist on this machine");
            return;
        }
        let offsets = task_offsets().unwrap();
        // `comm` is a char[16] far into the struct; pid and tgid are adjacent ints.
        assert_eq!(offsets.tgid, offsets.pid + 4);
        assert!(offsets.comm > offsets.tgid);
        assert!(offsets.state < offsets.pid);
        assert_ne!(offsets.on_cpu, 0);
        // `thread` is the last member of task_struct (it ends in an FPU area).
        assert!(offsets.fsbase > offsets.comm);
    }

    #[test]
    fn this_kernel_knows_bpf_loop() {
        if !std::path::Path::new(VMLINUX).exists() {
            eprintln!("skipped: {VMLINUX} does not exist on this machine");
            return;
        }
        // Linux 5.17 and later; the machines tripod is tested on are newer.
        assert_eq!(knows_bpf_loop(), Some(true));
        let data = std::fs::read(VMLINUX).unwrap();
        let btf = Btf::parse(&data).unwrap();
        assert!(!btf.has_enumerator("bpf_func_id", "BPF_FUNC_no_such_helper"));
        assert!(!btf.has_enumerator("no_such_enum", "BPF_FUNC_loop"));
    }

    #[test]
    fn anonymous_members_are_flattened_and_bad_data_is_an_error() {
        // Types: 1 = int, 2 = union { int a; int b; }, 3 = struct s { int x; union { .. } at 32 bits }.
        let mut types = Vec::new();
        let mut put = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        put(&[1, 1 << 24, 4, 32]); // int "int", size 4, 32 bits
        put(&[0, (KIND_UNION << 24) | 2, 4]);
        put(&[5, 1, 0]); // a
        put(&[7, 1, 0]); // b
        put(&[9, (KIND_STRUCT << 24) | 2, 8]);
        put(&[11, 1, 0]); // x
        put(&[0, 2, 32]); // anonymous union
        let strings = b"\0int\0a\0b\0s\0x\0";
        let mut data = Vec::new();
        data.extend(MAGIC.to_le_bytes());
        data.extend([1, 0]);
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend(word.to_le_bytes());
        }
        data.extend(&types);
        data.extend(strings);
        let btf = Btf::parse(&data).unwrap();
        let members = btf.struct_members("s").unwrap();
        assert_eq!(members["x"], 0);
        assert_eq!(members["a"], 4);
        assert_eq!(members["b"], 4);
        assert!(btf.struct_members("missing").is_err());
        assert!(Btf::parse(&data[..30]).is_err());
    }
}
