//! The words and numbers of a [`View`], shared by the screen and the plain
//! table, so both say the same thing.
use super::model::{Header, Row, Show, SortBy, View};
use crate::config::Mode;

/// The column titles, in order; the sorted one is marked by [`titles`].
const TITLES: [&str; 4] = ["%Own", "%Total", "OwnTime", "TotalTime"];

/// The first header line: what is sampled and how.
pub fn target_line(header: &Header) -> String {
    let mode = match header.mode {
        Mode::Cpu => "cpu",
        Mode::OffCpu => "off-cpu",
        Mode::Wall => "wall",
    };
    format!(
        "tripod-bpf top: {}  mode {mode}, {} at {} Hz",
        header.target, header.event, header.frequency
    )
}

/// The second header line: the window's rate, losses, processes and threads.
pub fn numbers_line(header: &Header) -> String {
    let rate = match header.mode {
        Mode::OffCpu => format!("{:.2} s off-CPU/s", header.rate),
        Mode::Cpu | Mode::Wall => format!("{:.1} samples/s", header.rate),
    };
    let mut line = format!(
        "{rate}, {} lost, {} {}, {} {} (last {:.1} s)",
        header.lost,
        header.processes,
        plural(header.processes, "process", "processes"),
        header.threads,
        plural(header.threads, "thread", "threads"),
        header.window_seconds
    );
    if let Some(filter) = &header.filter {
        line += &format!("  showing {filter}");
    }
    if header.partial_times {
        line += "  (times partial: too many rows)";
    }
    if header.paused {
        line += "  PAUSED";
    }
    line
}

/// The titles of the columns, the sorted one marked with `*`.
pub fn titles(header: &Header) -> [String; 5] {
    let sorted = match header.sort {
        SortBy::OwnShare => 0,
        SortBy::TotalShare => 1,
        SortBy::OwnTime => 2,
        SortBy::TotalTime => 3,
    };
    let mut out = TITLES.map(String::from);
    out[sorted] = format!("{}*", TITLES[sorted]);
    let last = match header.show {
        Show::Functions => "Function (file:line)",
        Show::Stacks => "Stack, innermost first (process)",
    };
    [
        out[0].clone(),
        out[1].clone(),
        out[2].clone(),
        out[3].clone(),
        last.into(),
    ]
}

/// A row's cells, in the order of [`titles`].
pub fn cells(row: &Row) -> [String; 5] {
    let place = if row.entry.location.is_empty() {
        String::new()
    } else {
        format!(" ({})", row.entry.location)
    };
    [
        format!("{:.1}%", row.own_share),
        format!("{:.1}%", row.total_share),
        seconds(row.own_seconds),
        seconds(row.total_seconds),
        format!("{}{place}", row.entry.name),
    ]
}

/// The keys, for the screen's last line.
pub const KEYS: &str =
    "1-4 sort  s functions/stacks  p process  t thread  space pause  r reset  q quit";

/// The view as plain text: the header, the titles and at most `max_rows` rows.
pub fn plain(view: &View, max_rows: usize) -> String {
    let mut out = format!(
        "{}\n{}\n",
        target_line(&view.header),
        numbers_line(&view.header)
    );
    let mut line = |cells: [String; 5]| {
        out += &format!(
            "{:>8} {:>8} {:>10} {:>10}  {}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        );
    };
    line(titles(&view.header));
    for row in view.rows.iter().take(max_rows) {
        line(cells(row));
    }
    out
}

fn seconds(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.2}s")
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}
