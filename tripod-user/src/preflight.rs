//! Checks against the running system, made before anything is loaded, so a
//! bad invocation fails with one clear line and nothing half-started.
use std::{fs, io};

use anyhow::Result;

use crate::{
    config::{Config, DumpConfig, Target},
    error::UsageError,
    usage_error,
};

/// Runs every check that does not need BPF. Output paths are checked by opening them.
pub fn check(config: &Config) -> Result<()> {
    check_privileges()?;
    check_frequency(config.frequency)?;
    match &config.target {
        Target::Pids(pids) => pids
            .iter()
            .try_for_each(|&pid| check_pid(pid, ", or use --all")),
        Target::Command(command) => find_program(&command[0]).map(drop),
        Target::All => Ok(()),
    }
}

/// Checks each `--cgroup PATH` (a cgroup v2 directory) and gives the
/// cgroups it names, in order, without repeats.
pub fn check_cgroups(paths: &[std::path::PathBuf]) -> Result<Vec<crate::cgroup::Selected>> {
    let mut selected: Vec<crate::cgroup::Selected> = Vec::new();
    for path in paths {
        let cgroup = crate::cgroup::select(path)?;
        if !selected.iter().any(|s| s.id == cgroup.id) {
            selected.push(cgroup);
        }
    }
    if selected.len() > tripod_common::MAX_CGROUPS as usize {
        usage_error!(
            "--cgroup names {} cgroups, more than the {} the kernel side holds; name a common parent",
            selected.len(),
            tripod_common::MAX_CGROUPS
        );
    }
    Ok(selected)
}

/// The checks for `tripod-bpf dump`.
pub fn check_dump(config: &DumpConfig) -> Result<()> {
    check_privileges()?;
    check_pid(config.pid, "")
}

/// The path of `program`, looked up in PATH like the shell does, so a typo is
/// a clear error here rather than a shell message later.
pub fn find_program(program: &std::ffi::OsStr) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |path: &std::path::Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = std::path::Path::new(program);
    let found = if path.components().count() > 1 {
        is_executable(path).then(|| path.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(path))
                .find(|p| is_executable(p))
        })
    };
    found.ok_or_else(|| {
        UsageError(format!(
            "cannot run {}: no such executable file; check the command and your PATH",
            path.display()
        ))
        .into()
    })
}

fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    // Without root, CAP_BPF (39) + CAP_PERFMON (38), or CAP_SYS_ADMIN (21), will do.
    let effective = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapEff:"))?;
            u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
        })
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if (has(39) && has(38)) || has(21) {
        return Ok(());
    }
    usage_error!(
        "loading eBPF programs needs root or the CAP_BPF and CAP_PERFMON capabilities; run with sudo"
    )
}

fn check_frequency(frequency: u64) -> Result<()> {
    let path = "/proc/sys/kernel/perf_event_max_sample_rate";
    let Some(max) = fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return Ok(());
    };
    if frequency > max {
        usage_error!(
            "frequency {frequency} Hz is above the kernel's limit of {max} Hz \
             (kernel.perf_event_max_sample_rate); lower -F or raise the limit with sysctl"
        );
    }
    Ok(())
}

/// `or_else` ends the advice of a missing pid (`, or use --all` when recording).
fn check_pid(pid: u32, or_else: &str) -> Result<()> {
    if pid == std::process::id() {
        // The eBPF programs skip tripod-bpf's own threads, by design: its work
        // would fill every profile. A dump of it would show no thread.
        usage_error!(
            "pid {pid} is tripod-bpf itself, which never samples or dumps itself; pass the pid of another process"
        );
    }
    let status = match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            usage_error!("no process with pid {pid}; check the pid with `ps -p {pid}`{or_else}")
        }
        Err(e) => usage_error!("cannot read /proc/{pid}/status: {e}; check the pid{or_else}"),
    };
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    match tgid {
        Some(tgid) if tgid != pid => {
            usage_error!("{pid} is a thread of process {tgid}; pass --pid {tgid} (all its threads are sampled)")
        }
        _ => Ok(()),
    }
}

/// Explains why the kernel refused to load or attach the program, if it was
/// a permission problem; `None` for other failures.
pub fn explain_refusal(error: &anyhow::Error) -> Option<UsageError> {
    let denied = error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)))
    });
    if !denied {
        return None;
    }
    let lockdown = fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    let setting = if lockdown.contains("[confidentiality]") {
        "kernel lockdown is in confidentiality mode, which forbids BPF tracing; \
         boot with lockdown=integrity or lockdown=none"
            .to_string()
    } else if lockdown.contains("[integrity]") {
        "kernel lockdown is in integrity mode; check the kernel log (dmesg) for what it refused"
            .to_string()
    } else {
        "check kernel.perf_event_paranoid, LSM policy (SELinux/AppArmor) or a seccomp profile, \
         and run as root"
            .to_string()
    };
    Some(UsageError(format!(
        "the kernel refused to load or attach the eBPF program ({error:#}); {setting}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_checked() {
        assert!(check_pid(std::os::unix::process::parent_id(), "").is_ok());
        let e = check_pid(std::process::id(), "").unwrap_err().to_string();
        assert!(e.contains("is tripod-bpf itself"), "{e}");
        let e = check_pid(999_999_999, ", or use --all")
            .unwrap_err()
            .downcast::<UsageError>()
            .unwrap();
        assert!(e.0.contains("no process with pid 999999999"), "{e}");
        assert!(e.0.ends_with(", or use --all"), "{e}");
        // `dump` has no --all to suggest.
        let e = check_pid(999_999_999, "").unwrap_err().to_string();
        assert!(!e.contains("--all"), "{e}");
    }

    #[test]
    fn threads_are_told_their_process() {
        let thread = std::thread::spawn(|| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            check_pid(tid, "")
                .unwrap_err()
                .downcast::<UsageError>()
                .unwrap()
        });
        let e = thread.join().unwrap();
        assert!(
            e.0.contains(&format!("pass --pid {}", std::process::id())),
            "{e}"
        );
    }

    #[test]
    fn frequency_is_checked_against_the_kernel_limit() {
        assert!(check_frequency(99).is_ok());
        let e = check_frequency(u64::MAX)
            .unwrap_err()
            .downcast::<UsageError>()
            .unwrap();
        assert!(e.0.contains("perf_event_max_sample_rate"), "{e}");
    }

    #[test]
    fn commands_are_found_in_path_or_by_path() {
        assert!(find_program("sh".as_ref()).unwrap().is_absolute());
        assert!(find_program("/bin/sh".as_ref()).is_ok());
        let e = find_program("no-such-command-xyz".as_ref())
            .unwrap_err()
            .downcast::<UsageError>()
            .unwrap();
        assert!(e.0.contains("cannot run no-such-command-xyz"), "{e}");
    }

    #[test]
    fn permission_errors_are_explained() {
        let e = anyhow::Error::from(io::Error::from_raw_os_error(libc::EPERM)).context("loading");
        assert!(explain_refusal(&e).is_some());
        let other = anyhow::anyhow!("verifier said no");
        assert!(explain_refusal(&other).is_none());
    }
}
