//! `tripod-bpf top`: the full-screen view driven through a real terminal (a tmux pane:
//! keys sent, the screen read back), and the plain table it prints through a pipe.
//! The target is split.c, whose `heavy` runs three times as long as its `light`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tripod_tests::*;

/// How long any one thing the screen should show gets to appear: far more than the
/// refreshes it takes, far less than a hang.
const SCREEN_BOUND: Duration = Duration::from_secs(30);

/// The heavy share of heavy + light, in percent, and how far off it may be.
const HEAVY_SHARE: f64 = 75.0;
const TOLERANCE: f64 = 5.0;

/// A tmux server of our own (its own socket), with one detached session running a
/// shell command in a 150x40 pane; killed on drop.
struct Pane {
    tmux: PathBuf,
    socket: String,
}

impl Pane {
    fn start(tmux: &Path, command: &str) -> Pane {
        let pane = Pane {
            tmux: tmux.to_path_buf(),
            socket: format!("tripod-top-test-{}", std::process::id()),
        };
        pane.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "150",
            "-y",
            "40",
            command,
        ]);
        pane
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.tmux)
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux {args:?}: {e}"));
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "top", key]);
    }

    /// Waits until the screen satisfies `ready` and returns it; panics with the last
    /// screen after [`SCREEN_BOUND`].
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_BOUND;
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("the screen never showed {what}; it shows:\n{screen}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new(&self.tmux)
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

/// A table row: the four numbers and the function column.
#[derive(Debug)]
struct Row {
    own: f64,
    total: f64,
    function: String,
}

/// The rows of a screen or a plain table: lines that start with two percentages.
fn rows(screen: &str) -> Vec<Row> {
    screen
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let own = words.next()?.strip_suffix('%')?.parse().ok()?;
            let total = words.next()?.strip_suffix('%')?.parse().ok()?;
            let function = words.nth(2)?.to_string();
            Some(Row {
                own,
                total,
                function,
            })
        })
        .collect()
}

fn row<'a>(rows: &'a [Row], function: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.function == function)
}

/// heavy's share of heavy + light (own time), when both are in the rows.
fn heavy_share(rows: &[Row]) -> Option<f64> {
    let (heavy, light) = (row(rows, "heavy")?, row(rows, "light")?);
    (heavy.own + light.own > 0.0).then(|| heavy.own * 100.0 / (heavy.own + light.own))
}

/// The seconds the header says the window covers: `(last 2.0 s)`.
fn window_seconds(screen: &str) -> Option<f64> {
    let after = screen.split("(last ").nth(1)?;
    after.split(' ').next()?.parse().ok()
}

/// The window is full (three refreshes of about a second: some 900 samples at the 300 a
/// second a busy 2-core machine gives, so 5 points are over 3 standard deviations of the
/// share) and both functions are shown.
fn settled(screen: &str) -> bool {
    window_seconds(screen).is_some_and(|s| s >= 2.5) && heavy_share(&rows(screen)).is_some()
}

/// A shell command line for the pane: `top` with `options`, then its exit status and
/// whether the terminal is back in cooked mode (echo and canonical input on), then a pause
/// so the pane can still be read.
fn top_then_terminal_state(options: &str) -> String {
    format!(
        "'{}' top {options}; echo top-exit=$?; \
         if stty -a | grep -qw -e -icanon -e -echo; then echo terminal-raw; \
         else echo terminal-cooked; fi; sleep 600",
        tripod_bin().display()
    )
}

/// Presses q and checks that top exited 0 and left the terminal cooked; the screen after.
fn quit_with_q(pane: &Pane) -> String {
    pane.press("q");
    let after = pane.wait_for("top's exit", |s| s.contains("terminal-"));
    assert!(after.contains("top-exit=0"), "q must exit 0:\n{after}");
    assert!(
        after.contains("terminal-cooked"),
        "raw mode left on:\n{after}"
    );
    after
}

#[test]
fn top_on_a_terminal_shows_the_split_and_answers_keys() {
    if !require_bpf() {
        return;
    }
    let Some(tmux) = program("tmux") else {
        return;
    };
    let _guard = serial();
    let fixture = Fixture::start(SPLIT_FP, &[]);
    let options = format!("-p {} -F 499 --delay 1 --window 3", fixture.pid());
    let pane = Pane::start(&tmux, &top_then_terminal_state(&options));

    let screen = pane.wait_for("heavy and light over a full window", settled);
    assert!(
        screen.contains("tripod-bpf top: pid") && screen.contains("samples/s"),
        "no header:\n{screen}"
    );
    let share = heavy_share(&rows(&screen)).expect("settled");
    assert!(
        (share - HEAVY_SHARE).abs() <= TOLERANCE,
        "heavy is {share:.1}% of heavy + light, expected {HEAVY_SHARE}% ± {TOLERANCE}:\n{screen}"
    );
    // Sorted by own share (key 1, the default), the leaf `heavy` comes first.
    assert_eq!(rows(&screen)[0].function, "heavy", "{screen}");

    // Key 2 sorts by total share: a caller of both (main, ~100%) comes first.
    pane.press("2");
    let sorted = pane.wait_for("the rows sorted by %Total", |s| s.contains("%Total*"));
    let first = &rows(&sorted)[0];
    assert!(
        first.function != "heavy" && first.total > 95.0,
        "sorted by total, the first row should be an outer function:\n{sorted}"
    );

    // A refresh changes what the screen shows (the times at least grow).
    let before = pane.screen();
    pane.wait_for("a refresh", |s| s != before && !rows(s).is_empty());

    // The target exits: the view says so and waits for q.
    drop(fixture);
    pane.wait_for("that the target exited", |s| {
        s.contains("every target process has exited; press q to quit")
    });
    let after = quit_with_q(&pane);
    // Back on the main screen: nothing of the table is left.
    assert_eq!(
        pane.run(&["display", "-p", "-t", "top", "#{alternate_on}"])
            .trim(),
        "0"
    );
    assert!(!after.contains("%Own"), "the view is still shown:\n{after}");
}

#[test]
fn q_quits_a_running_view_and_gives_the_terminal_back() {
    if !require_bpf() {
        return;
    }
    let Some(tmux) = program("tmux") else {
        return;
    };
    let _guard = serial();
    let fixture = Fixture::start(SPLIT_FP, &[]);
    let pane = Pane::start(
        &tmux,
        &top_then_terminal_state(&format!("-p {}", fixture.pid())),
    );
    pane.wait_for("a row", |s| !rows(s).is_empty());
    let after = quit_with_q(&pane);
    assert!(!after.contains("%Own"), "the view is still shown:\n{after}");
}

#[test]
fn top_through_a_pipe_prints_plain_tables() {
    if !require_bpf() {
        return;
    }
    let _guard = serial();
    let fixture = Fixture::start(SPLIT_FP, &[]);
    let pid = fixture.pid().to_string();
    let mut child = tripod_command(&[
        "top", "-p", &pid, "-F", "499", "--delay", "1", "--window", "3",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("starting tripod-bpf top");
    // Tables until the fourth (the window is full from the third on).
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut text = String::new();
    let mut tables = 0;
    for line in stdout.lines() {
        let line = line.expect("reading top's stdout");
        if line.starts_with("tripod-bpf top: pid") {
            tables += 1;
            if tables == 5 {
                break;
            }
        }
        text.push_str(&line);
        text.push('\n');
    }
    send_signal(child.id(), libc::SIGTERM);
    let status = child.wait().expect("waiting for top");
    assert!(
        status.success(),
        "SIGTERM must end top with 0: {status}\n{text}"
    );
    assert_eq!(tables, 5, "fewer tables than refreshes:\n{text}");
    assert!(
        !text.contains('\x1b'),
        "escape sequences in the plain table:\n{text}"
    );
    let last = text.rsplit("tripod-bpf top: pid").next().expect("a table");
    let share = heavy_share(&rows(last))
        .unwrap_or_else(|| panic!("no heavy and light rows in the last table:\n{last}"));
    assert!(
        (share - HEAVY_SHARE).abs() <= TOLERANCE,
        "heavy is {share:.1}% of heavy + light, expected {HEAVY_SHARE}% ± {TOLERANCE}:\n{last}"
    );
}

#[test]
fn top_refuses_bad_arguments_in_one_line() {
    let _guard = serial();
    for (args, word) in [
        (&["top", "--pid", "999999999"][..], "999999999"),
        (
            &["top", "--all", "--delay", "2", "--window", "1"][..],
            "--window",
        ),
        (&["top", "--all", "--delay", "0"][..], "--delay"),
        (&["top"][..], "no target"),
    ] {
        let out = run_tripod(args);
        let stderr = stderr_text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].contains(word),
            "{args:?}: expected one line naming {word}, got:\n{stderr}"
        );
    }
}
