use std::{io, process::ExitCode};

use tripod_user::{
    app,
    cli::{self, ParseError},
    config::Command,
    dump,
    error::UsageError,
    messages, offline,
    signals::Shutdown,
    top,
};

fn main() -> ExitCode {
    one_malloc_arena();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let command = match cli::parse_args(std::env::args_os()) {
        Ok(command) => command,
        Err(ParseError::Clap(clap_error)) => clap_error.exit(),
        Err(ParseError::Usage(usage)) => return usage_failure(&usage),
    };
    if let Command::Print(text) = &command {
        use io::Write as _;
        return match io::stdout().write_all(text) {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                messages::error(&format!("writing to stdout: {e}"));
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        };
    }
    // Recordings and dumps handle SIGINT, SIGTERM and SIGHUP from here on,
    // before anything slow: a signal during start-up still ends in a written
    // output, never in a kill by the default action.
    let shutdown = match &command {
        Command::Record(_) | Command::Dump(_) | Command::DumpCore(_) | Command::Top(_) => {
            match Shutdown::install() {
                Ok(shutdown) => shutdown,
                Err(error) => {
                    messages::error(&format!("{error:#}"));
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => Shutdown::unwired(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = runtime.map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            match command {
                Command::Record(config) => app::run(config, shutdown).await,
                Command::Dump(config) => dump::run(config, shutdown).await,
                Command::DumpCore(config) => dump::run_core(config, shutdown),
                Command::Report(config) => offline::run(config),
                Command::Top(config) => top::run(config, shutdown).await,
                Command::Print(_) => Ok(0),
            }
        })
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => match error.downcast_ref::<UsageError>() {
            Some(usage) => usage_failure(usage),
            // `tripod-bpf ... | head` closing the pipe early is not a failure.
            None if is_broken_pipe(&error) => ExitCode::SUCCESS,
            None => {
                // Causes can quote a target's file names.
                let message = tripod_user::text::escape_controls_owned(format!("{error:#}"));
                messages::error(&message);
                ExitCode::FAILURE
            }
        },
    }
}

fn usage_failure(usage: &UsageError) -> ExitCode {
    messages::error(&usage.to_string());
    ExitCode::from(2)
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// glibc gives each thread that allocates its own heap arena. The symbolizer's
/// thread does most of the allocating at the end of a run, so a second arena
/// raised peak memory by 13 MiB (61 instead of 47 MiB for one process) with
/// nothing to gain: our few threads never contend for the heap.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes a malloc setting; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
