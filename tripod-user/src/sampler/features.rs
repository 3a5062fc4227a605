//! What `--unwind tables` needs of the running kernel, found before anything
//! is loaded, so that a kernel without it runs as `--unwind dwarf` (the
//! copy) with one line saying why, instead of failing to load the program.
//!
//! The walk is a `bpf_loop` (Linux 5.17): a plain loop of binary searches
//! exceeds the verifier's budget. The kernel's BTF says whether it knows
//! the helper (`BPF_FUNC_loop` in `enum bpf_func_id`); without readable
//! BTF, the kernel's version is the last resort.

/// Set (to anything) by tests: the kernel is taken to lack `bpf_loop`, so
/// the fallback is exercised on a kernel that has it.
pub const PRETEND_NO_BPF_LOOP: &str = "TRIPOD_TEST_PRETEND_NO_BPF_LOOP";

/// A kernel feature `--unwind tables` needs and the running kernel lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingFeature {
    /// The `bpf_loop` helper (Linux 5.17).
    BpfLoop,
}

impl MissingFeature {
    /// What is missing and what the kernel needs instead, for the user.
    pub fn describe(self) -> &'static str {
        match self {
            MissingFeature::BpfLoop => "the bpf_loop helper (Linux 5.17 or later)",
        }
    }
}

/// What the kernel says about itself, gathered by [`kernel_facts`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelFacts {
    /// Whether its BTF lists `bpf_loop`; `None`: the BTF could not be read.
    pub btf_knows_bpf_loop: Option<bool>,
    /// `uname -r`, e.g. `6.18.0-1-amd64`.
    pub release: String,
    /// [`PRETEND_NO_BPF_LOOP`] is set.
    pub pretend_no_bpf_loop: bool,
}

/// What the tables walk needs and `facts` say is missing; `None`: nothing.
/// The BTF is believed first (backports make versions lie); a release that
/// cannot be parsed is given the benefit of the doubt, and the load says
/// what failed.
pub fn missing_for_tables(facts: &KernelFacts) -> Option<MissingFeature> {
    if facts.pretend_no_bpf_loop {
        return Some(MissingFeature::BpfLoop);
    }
    let has_loop = match facts.btf_knows_bpf_loop {
        Some(known) => known,
        None => release_at_least(&facts.release, (5, 17)).unwrap_or(true),
    };
    (!has_loop).then_some(MissingFeature::BpfLoop)
}

/// Whether `release` (`MAJOR.MINOR...`) is at least `wanted`; `None` when
/// it does not start with two numbers.
fn release_at_least(release: &str, wanted: (u32, u32)) -> Option<bool> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor) >= wanted)
}

/// The facts [`missing_for_tables`] decides on, read from this kernel.
pub fn kernel_facts() -> KernelFacts {
    // SAFETY: uname fills the struct we own; all-zero is a valid starting value.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local utsname.
    let release = match unsafe { libc::uname(&mut name) } {
        // SAFETY: uname NUL-terminates `release`.
        0 => unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
        _ => String::new(),
    };
    KernelFacts {
        btf_knows_bpf_loop: super::btf::knows_bpf_loop(),
        release,
        pretend_no_bpf_loop: std::env::var_os(PRETEND_NO_BPF_LOOP).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(btf: Option<bool>, release: &str) -> KernelFacts {
        KernelFacts {
            btf_knows_bpf_loop: btf,
            release: release.into(),
            pretend_no_bpf_loop: false,
        }
    }

    #[test]
    fn the_btf_is_believed_over_the_version() {
        assert_eq!(missing_for_tables(&facts(Some(true), "5.10.0")), None);
        assert_eq!(
            missing_for_tables(&facts(Some(false), "6.18.0")),
            Some(MissingFeature::BpfLoop)
        );
    }

    #[test]
    fn without_btf_the_version_decides() {
        let missing = |release| missing_for_tables(&facts(None, release));
        assert_eq!(missing("5.16.20-generic"), Some(MissingFeature::BpfLoop));
        assert_eq!(missing("4.19.0"), Some(MissingFeature::BpfLoop));
        assert_eq!(missing("5.17.0"), None);
        assert_eq!(missing("6.1.0-13-amd64"), None);
        // Unparsable: the load will say what failed.
        assert_eq!(missing("weird"), None);
    }

    #[test]
    fn pretending_overrides_a_capable_kernel() {
        let pretend = KernelFacts {
            pretend_no_bpf_loop: true,
            ..facts(Some(true), "6.18.0")
        };
        assert_eq!(missing_for_tables(&pretend), Some(MissingFeature::BpfLoop));
    }

    #[test]
    fn this_kernel_is_read() {
        let facts = kernel_facts();
        assert!(
            release_at_least(&facts.release, (2, 6)).unwrap(),
            "{facts:?}"
        );
    }
}
