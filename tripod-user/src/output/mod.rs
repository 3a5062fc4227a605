//! Output formats and destinations. The only modules that write results.
//!
//! Every format implements [`Render`]: one call per report (each interval,
//! or once for the whole run) and one at the end with the run's summary; or,
//! for `tripod-bpf dump`, one call per thread dump.
mod files;
pub(crate) mod folded;
pub mod json;
mod log;
pub(crate) mod pprof;
pub mod push;
mod speedscope;
mod status;
mod svg;

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::Result;
use tempfile::NamedTempFile;

pub use self::{
    folded::Folded,
    json::{Document, DumpDocument, Json},
    log::{describe_completeness, Log},
    pprof::Pprof,
    speedscope::Speedscope,
    status::{Progress, StatusLine},
    svg::Svg,
};
use crate::{
    config::{FoldedPrefix, OutputDest, OutputFormat},
    exceptions::Tracebacks,
    messages,
    report::{Report, Summary, ThreadDump},
};

/// Renders reports in one format.
pub trait Render {
    /// Writes one report (an interval, or the whole run).
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()>;
    /// Writes the end-of-run summary, if the format has one.
    fn summary(&mut self, summary: &Summary, out: &mut dyn Write) -> io::Result<()>;
    /// Writes one snapshot of every thread of a process.
    fn dump(&mut self, dump: &ThreadDump, out: &mut dyn Write) -> io::Result<()>;
    /// Writes the Python tracebacks of a log: by default as a recording
    /// with one stack per distinct traceback, counted once per time logged.
    fn tracebacks(&mut self, tracebacks: &Tracebacks, out: &mut dyn Write) -> io::Result<()> {
        self.report(&crate::exceptions::to_report(tracebacks), out)
    }
}

pub fn renderer(format: OutputFormat) -> Box<dyn Render> {
    match format {
        OutputFormat::Log => Box::new(Log),
        OutputFormat::Folded => Box::<Folded>::default(),
        OutputFormat::Json => Box::new(Json),
        OutputFormat::Svg => Box::new(Svg),
        OutputFormat::Pprof => Box::new(Pprof),
        OutputFormat::Speedscope => Box::new(Speedscope),
    }
}

/// An opened destination with its renderer.
pub struct Output {
    renderer: Box<dyn Render>,
    format: OutputFormat,
    sink: Sink,
    /// Whether a whole report, summary or dump has been written: a run that
    /// fails after that still keeps its file (nothing sampled is lost).
    /// Shared with the abort hook ([`Output::abort_hook`]).
    complete: Arc<AtomicBool>,
    /// The path written to, or `-` for stdout.
    pub name: String,
}

/// Where the rendered bytes go.
enum Sink {
    Stdout(io::Stdout),
    Discard(io::Sink),
    /// The default log, or a device or FIFO named with `-o`: written in place.
    Direct(BufWriter<File>),
    /// A file named with `-o`: a temporary file beside it, renamed over it by
    /// [`Output::finish`], so a failed run never empties the old file and a
    /// reader never sees half a file.
    Staged {
        writer: BufWriter<NamedTempFile>,
        dest: PathBuf,
    },
    /// After `finish` or `discard`.
    Closed,
}

impl Output {
    /// Opens the destination now, so a bad path fails before sampling starts.
    pub fn open(dest: &OutputDest, format: OutputFormat) -> Result<Output> {
        let (sink, name) = match dest {
            OutputDest::Stdout => (Sink::Stdout(io::stdout()), "-".to_string()),
            OutputDest::Discard => (
                Sink::Discard(io::sink()),
                "nowhere (--push only)".to_string(),
            ),
            OutputDest::File(path) => (files::open(path)?, path.display().to_string()),
            OutputDest::TempFile => {
                let (file, path) = files::new_log(format.suffix())?;
                (
                    Sink::Direct(BufWriter::new(file)),
                    path.display().to_string(),
                )
            }
        };
        Ok(Output {
            renderer: renderer(format),
            format,
            sink,
            complete: Arc::new(AtomicBool::new(false)),
            name,
        })
    }

    /// `--folded-prefix`: what folded lines start with (other formats
    /// have their own place for cgroups and containers).
    pub fn set_folded_prefix(&mut self, prefix: FoldedPrefix) {
        if self.format == OutputFormat::Folded {
            self.renderer = Box::new(Folded { prefix });
        }
    }

    pub fn report(&mut self, report: &Report) -> io::Result<()> {
        let out = self.sink.writer()?;
        self.renderer.report(report, out)?;
        out.flush()?;
        self.complete.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let out = self.sink.writer()?;
        self.renderer.summary(summary, out)?;
        out.flush()
    }

    pub fn dump(&mut self, dump: &ThreadDump) -> io::Result<()> {
        let out = self.sink.writer()?;
        self.renderer.dump(dump, out)?;
        out.flush()?;
        self.complete.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub fn tracebacks(&mut self, tracebacks: &Tracebacks) -> io::Result<()> {
        let out = self.sink.writer()?;
        self.renderer.tracebacks(tracebacks, out)?;
        out.flush()?;
        self.complete.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether a whole report or dump has been written.
    pub fn has_written(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// What an abort (a second Ctrl-C while stopping, which exits at once
    /// from another thread) does with a file named with `-o`: puts what was
    /// written and flushed in place if a whole report made it, else removes
    /// the temporary file and leaves the old one. `None` for other outputs.
    pub fn abort_hook(&self) -> Option<impl Fn() + Send + 'static> {
        let Sink::Staged { writer, dest } = &self.sink else {
            return None;
        };
        let (temp, dest) = (writer.get_ref().path().to_path_buf(), dest.clone());
        let complete = self.complete.clone();
        Some(move || {
            let _ = if complete.load(Ordering::SeqCst) {
                std::fs::rename(&temp, &dest)
            } else {
                std::fs::remove_file(&temp)
            };
        })
    }

    /// Puts the file in place: renames the temporary file over the one named
    /// with `-o`. Called once everything is written; later writes fail.
    pub fn finish(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.sink, Sink::Closed) {
            Sink::Staged { writer, dest } => files::persist(writer, &dest),
            Sink::Direct(mut writer) => Ok(writer.flush()?),
            Sink::Stdout(mut stdout) => Ok(stdout.flush()?),
            Sink::Discard(_) | Sink::Closed => Ok(()),
        }
    }

    /// Drops what was written to a file named with `-o` (its old content, if
    /// any, stays); for a run or report that failed before it had anything to say.
    pub fn discard(&mut self) {
        // Dropping the temporary file removes it.
        self.sink = Sink::Closed;
    }
}

impl Drop for Output {
    /// A run that ends early (an error after sampling) still puts what it
    /// wrote in place; one that wrote nothing whole leaves the old file be.
    fn drop(&mut self) {
        if !self.has_written() {
            return;
        }
        if let Err(error) = self.finish() {
            // Nothing is left to return it to: the run is ending with another error.
            messages::error(&format!("{error:#}"));
        }
    }
}

impl Sink {
    fn writer(&mut self) -> io::Result<&mut dyn Write> {
        Ok(match self {
            Sink::Stdout(stdout) => stdout,
            Sink::Discard(sink) => sink,
            Sink::Direct(writer) => writer,
            Sink::Staged { writer, .. } => writer,
            Sink::Closed => {
                return Err(io::Error::other("the output was already closed"));
            }
        })
    }
}

#[cfg(test)]
mod tests;
