//! Corpus replay of hostile ELF files, cargo-fuzz style: a real binary with
//! deterministic mutations of its headers and sections (garbage bytes, huge
//! sizes and offsets, truncations), each fed to every reader of target
//! files: the unwinder, Python detection, the debug-link check and the
//! symbolizer. Each must return (data or a reason), never panic, hang or
//! allocate what a header claims.
use std::{fs, path::Path};

use crate::{
    process::Module,
    python::detect::Binary,
    symbolize::{Resolved, Symbolizer},
    unwind::elf::UnwindFile,
};

/// A small binary every Debian machine has.
const SEED: &str = "/bin/true";
const MUTANTS: u64 = 160;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutant `n` of `seed`: which part is damaged and how depends on `n` alone.
fn mutate(seed: &[u8], n: u64) -> Vec<u8> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d ^ (n + 1).wrapping_mul(0x9e37_79b9));
    let mut bytes = seed.to_vec();
    let u64_at = |bytes: &[u8], at: usize| {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize
    };
    let shoff = u64_at(&bytes, 0x28).min(bytes.len());
    let phoff = u64_at(&bytes, 0x20).min(bytes.len());
    let header_area = |rng: &mut XorShift, bytes: &[u8]| match rng.below(3) {
        0 => rng.below(64),
        1 => phoff + rng.below(bytes.len() - phoff),
        _ => shoff + rng.below(bytes.len().saturating_sub(shoff).max(1)),
    };
    match n % 4 {
        // Garbage bytes in the ELF, program or section headers.
        0 => {
            for _ in 0..1 + rng.below(16) {
                let at = header_area(&mut rng, &bytes).min(bytes.len() - 1);
                bytes[at] = rng.next() as u8;
            }
        }
        // A size or offset field set to something enormous.
        1 => {
            let at = header_area(&mut rng, &bytes).min(bytes.len() - 8) & !7;
            let huge = [u64::MAX, 1 << 62, (1 << 32) - 1, bytes.len() as u64 + 1];
            bytes[at..at + 8].copy_from_slice(&huge[rng.below(huge.len())].to_le_bytes());
        }
        // Cut short anywhere.
        2 => bytes.truncate(rng.below(bytes.len())),
        // Garbage over a random stretch of section contents.
        _ => {
            let start = rng.below(bytes.len());
            let end = (start + 1 + rng.below(4096)).min(bytes.len());
            for b in &mut bytes[start..end] {
                *b = rng.next() as u8;
            }
        }
    }
    bytes
}

#[test]
fn mutated_elf_files_are_read_safely() {
    let Ok(seed) = fs::read(SEED) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{SEED} is missing"
        );
        eprintln!("skipping: no {SEED}");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut symbolizer = Symbolizer::new();
    let mut named = 0;
    for n in 0..MUTANTS {
        let path = dir.path().join(format!("mutant{n}"));
        fs::write(&path, mutate(&seed, n)).unwrap();
        let open = || fs::File::open(&path).unwrap();
        let _ = UnwindFile::read(open());
        let _ = Binary::read(open(), "python3.11");
        let module = Module::for_test(n as usize, "mutant", Some(path.clone()));
        symbolizer.resolve_user(&module, &[0, 0x1000, 0x2000, u64::MAX - 1]);
        for offset in [0, 0x1000] {
            match symbolizer.user(&module, offset).as_deref() {
                Some(Resolved::Symbols(_)) => named += 1,
                Some(Resolved::Unknown(why)) => assert!(!why.to_string().is_empty()),
                None => panic!("mutant {n}: offset {offset:#x} has no answer"),
            }
        }
    }
    // Not a check of the mutants, only that the loop ran over real files.
    println!("{named} of {} lookups named a symbol", 2 * MUTANTS);
    assert!(Path::new(SEED).exists());
}
