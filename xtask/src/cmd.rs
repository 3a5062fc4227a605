//! Running external commands. Every command that does work is echoed as a shell line first,
//! so that a failing step can be copied and re-run by hand.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
};

use anyhow::{bail, Context as _, Result};

/// The workspace root; xtask lives in `<root>/xtask`.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
}

/// True when running as root (needed to load eBPF programs and to install packages).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The directory `cargo install` puts binaries in.
pub fn cargo_bin_dir() -> PathBuf {
    match env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home).join("bin"),
        None => PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo/bin"),
    }
}

/// Puts `cargo_bin_dir()` first on PATH (if missing) for this process and every command it
/// spawns, so that a freshly `cargo install`ed bpf-linker is found by the eBPF build.
pub fn add_cargo_bin_to_path() {
    let bin = cargo_bin_dir();
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)))
        .expect("PATH entries contain no separator");
    // Edition 2021: set_var is safe; xtask is single-threaded here.
    env::set_var("PATH", joined);
}

/// Finds an executable on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Prints and runs `cmd` with inherited stdio; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = spawn(cmd)?.wait().context("waiting for command")?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Prints and starts `cmd` with inherited stdio.
pub fn spawn(cmd: &mut Command) -> Result<Child> {
    eprintln!("[xtask] $ {}", show(cmd));
    cmd.spawn()
        .with_context(|| format!("cannot start `{}`", show(cmd)))
}

/// Runs a read-only check quietly: its stdout if it ran and succeeded, else None.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The exit code a shell would report for `status` (128 + signal number when killed).
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}

/// `cmd` as a copy-pasteable shell line: `VAR=value program args...`.
pub fn show(cmd: &Command) -> String {
    let current_path = env::var_os("PATH").unwrap_or_default();
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        let Some(value) = value else { continue };
        words.push(format!(
            "{}={}",
            key.to_string_lossy(),
            show_env_value(key, value, &current_path)
        ));
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

/// A PATH that only prepends to ours is shown as `dir:$PATH`, which is what one would type.
fn show_env_value(key: &OsStr, value: &OsStr, current_path: &OsStr) -> String {
    let (value, current) = (value.to_string_lossy(), current_path.to_string_lossy());
    if key == "PATH" && !current.is_empty() {
        if let Some(prefix) = value.strip_suffix(&*current) {
            if let Some(prefix) = prefix.strip_suffix(':') {
                return format!("{}:$PATH", quote(OsStr::new(prefix)));
            }
        }
    }
    quote(OsStr::new(&*value))
}

/// Single-quotes a word for the shell unless it only has characters that need no quoting.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%^".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn shows_env_program_and_quoted_args() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22").args([
            "install",
            "--version",
            "^0.13",
            "it's here",
            "",
        ]);
        assert_eq!(
            show(&cmd),
            r"LLVM_PREFIX=/usr/lib/llvm-22 cargo install --version ^0.13 'it'\''s here' ''"
        );
    }

    #[test]
    fn shows_prepended_path_as_dollar_path() {
        let current = OsStr::new("/usr/bin:/bin");
        let shown = show_env_value(
            OsStr::new("PATH"),
            OsStr::new("/usr/lib/llvm-22/bin:/usr/bin:/bin"),
            current,
        );
        assert_eq!(shown, "/usr/lib/llvm-22/bin:$PATH");
        let other = show_env_value(OsStr::new("PATH"), OsStr::new("/opt/bin"), current);
        assert_eq!(other, "/opt/bin");
    }

    #[test]
    fn exit_codes_match_the_shell() {
        // Raw wait statuses: exit code in the high byte, signal number in the low bits.
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGINT)), 130);
    }
}
