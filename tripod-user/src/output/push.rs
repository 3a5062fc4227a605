//! `--push URL`: each interval's profile sent to a Pyroscope server's ingest
//! API (`POST /ingest`, grafana.com/docs/pyroscope/latest/configure-server/about-server-api),
//! or anything that speaks it (Grafana Alloy's `pyroscope.receive_http`).
//!
//! Sampling never waits for the network: reports are queued (a clone of a
//! report shares its frames) and a thread of its own renders and sends them.
//! While the server is unreachable the queue holds at most
//! [`MAX_QUEUED_INTERVALS`]; older intervals are dropped and counted. Failed
//! requests are retried with exponential backoff; a request the server
//! rejects as malformed (4xx other than 429) is not retried.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use ureq::unversioned::multipart::{Form, Part};

use super::{folded::frames_line, pprof};
use crate::{
    config::{Mode, PushConfig, PushFormat},
    messages,
    report::{Report, StackReport},
};

/// Intervals kept while the server does not answer: a minute at the default 10 s.
pub const MAX_QUEUED_INTERVALS: usize = 6;
/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A request that takes longer has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened to the pushed intervals, for the end-of-run message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Intervals the server accepted.
    pub sent: u64,
    /// Intervals dropped from a full queue, or left unsent at exit.
    pub dropped: u64,
    /// Intervals the server rejected (not retried).
    pub rejected: u64,
    /// The last failure, for the message.
    pub last_error: Option<String>,
}

struct State {
    queue: VecDeque<(u64, Report)>,
    next_id: u64,
    closing: bool,
    stats: PushStats,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// The background sender.
pub struct Pusher {
    shared: Arc<Shared>,
    worker: Option<thread::JoinHandle<()>>,
}

impl Pusher {
    pub fn start(config: PushConfig) -> Pusher {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                next_id: 0,
                closing: false,
                stats: PushStats::default(),
            }),
            wake: Condvar::new(),
        });
        let worker = {
            let shared = shared.clone();
            let client = Client::new(config);
            thread::Builder::new()
                .name("tripod-push".into())
                .spawn(move || client.run(&shared))
                .ok()
        };
        Pusher { shared, worker }
    }

    /// Queues a report; returns at once. A full queue drops its oldest.
    pub fn send(&self, report: &Report) {
        let mut state = lock(&self.shared);
        if state.queue.len() >= MAX_QUEUED_INTERVALS {
            state.queue.pop_front();
            state.stats.dropped += 1;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back((id, report.clone()));
        self.shared.wake.notify_all();
    }

    /// Intervals waiting to be sent.
    pub fn queued(&self) -> usize {
        lock(&self.shared).queue.len()
    }

    /// Sends what is queued, waiting at most `grace`; what is left is dropped.
    pub fn finish(mut self, grace: Duration) -> PushStats {
        let deadline = Instant::now() + grace;
        let mut state = lock(&self.shared);
        state.closing = true;
        self.shared.wake.notify_all();
        while !state.queue.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            state = self
                .shared
                .wake
                .wait_timeout(state, left.min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.stats.dropped += state.queue.len() as u64;
        state.queue.clear();
        let stats = state.stats.clone();
        drop(state);
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            // The worker exits as soon as its current request ends (at most REQUEST_TIMEOUT).
            if worker.is_finished() || Instant::now() < deadline {
                let _ = worker.join();
            }
        }
        stats
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One HTTP request of an interval.
pub(super) struct Request {
    pub query: Vec<(&'static str, String)>,
    pub body: Body,
}

pub(super) enum Body {
    Folded(String),
    Pprof { profile: Vec<u8>, types: String },
}

enum Failure {
    /// Worth another try: no connection, a timeout, 429 or 5xx.
    Retry(String),
    /// The server says the request is wrong; trying again will not help.
    Rejected(String),
}

pub(super) struct Client {
    config: PushConfig,
    agent: ureq::Agent,
    ingest: String,
    host: String,
}

impl Client {
    pub(super) fn new(config: PushConfig) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("tripod-bpf/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            ingest: format!("{}/ingest", config.url.trim_end_matches('/')),
            host: hostname(),
            config,
            agent,
        }
    }

    fn run(self, shared: &Shared) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (id, report) = {
                let mut state = lock(shared);
                loop {
                    if let Some((id, report)) = state.queue.front() {
                        break (*id, report.clone());
                    }
                    if state.closing {
                        return;
                    }
                    state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            };
            let outcome = self.requests(&report).iter().try_for_each(|r| self.post(r));
            let mut state = lock(shared);
            // `finish` gave up on (and counted) whatever it found still queued.
            let still_queued = state.queue.front().is_some_and(|(front, _)| *front == id);
            match outcome {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    if still_queued {
                        state.stats.sent += 1;
                    }
                }
                Err(Failure::Rejected(why)) => {
                    messages::warn(&format!(
                        "warning: the push server rejected a profile: {why}"
                    ));
                    if still_queued {
                        state.stats.rejected += 1;
                    }
                    state.stats.last_error = Some(why);
                }
                Err(Failure::Retry(why)) => {
                    log::debug!("push failed, retrying in {backoff:?}: {why}");
                    state.stats.last_error = Some(why);
                    if !state.closing {
                        // New reports wake the condition too: keep waiting them out.
                        let until = Instant::now() + backoff;
                        while !state.closing && Instant::now() < until {
                            let left = until.saturating_duration_since(Instant::now());
                            state = shared
                                .wake
                                .wait_timeout(state, left)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                    // Closing: one try each, then give up on what is left.
                    if still_queued {
                        state.stats.dropped += 1;
                    }
                }
            }
            if still_queued {
                state.queue.pop_front();
            }
            shared.wake.notify_all();
        }
    }

    fn post(&self, request: &Request) -> Result<(), Failure> {
        let mut call = self.agent.post(&self.ingest);
        for (key, value) in &request.query {
            call = call.query(key, value);
        }
        for (name, value) in &self.config.headers {
            call = call.header(name, value);
        }
        let response = match &request.body {
            Body::Folded(text) => call.content_type("text/plain").send(text.as_bytes()),
            Body::Pprof { profile, types } => call.send(
                Form::new()
                    .part("profile", Part::bytes(profile).file_name("profile.pb.gz"))
                    .part(
                        "sample_type_config",
                        Part::bytes(types.as_bytes()).file_name("sample_type_config.json"),
                    ),
            ),
        };
        let mut response = response.map_err(|e| Failure::Retry(format!("{}: {e}", self.ingest)))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = response
            .body_mut()
            .read_to_string()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect::<String>();
        let why = format!("{} answered {status}: {}", self.ingest, text.trim());
        Err(if status == 429 || status >= 500 {
            Failure::Retry(why)
        } else {
            Failure::Rejected(why)
        })
    }

    /// The requests that carry one report.
    pub(super) fn requests(&self, report: &Report) -> Vec<Request> {
        let run = &report.run;
        let (profile_type, sample_rate) = match run.mode {
            Mode::Cpu => ("cpu", run.frequency),
            Mode::Wall => ("wall", run.frequency),
            // Counts are microseconds: at a "rate" of a million per second,
            // Pyroscope shows them as the time they are.
            Mode::OffCpu => ("off_cpu", 1_000_000),
        };
        let mut base_labels = vec![("host".to_string(), self.host.clone())];
        base_labels.extend(self.config.labels.iter().cloned());
        let common = |name: String, format: &str| {
            vec![
                ("name", name),
                ("from", report.start.timestamp().to_string()),
                (
                    "until",
                    report
                        .end
                        .timestamp()
                        .max(report.start.timestamp() + 1)
                        .to_string(),
                ),
                ("format", format.to_string()),
                ("sampleRate", sample_rate.to_string()),
                ("spyName", "tripod-bpf".to_string()),
                ("units", "samples".to_string()),
                ("aggregationType", "sum".to_string()),
            ]
        };
        match self.config.format {
            PushFormat::Pprof => {
                let Ok(profile) = pprof::report_bytes(report) else {
                    return Vec::new();
                };
                let types = sample_type_config(run.mode);
                // The server appends the profile type to this prefix.
                let name = format!("{}{}", self.config.name, labels(&base_labels));
                vec![Request {
                    query: common(name, "pprof"),
                    body: Body::Pprof { profile, types },
                }]
            }
            PushFormat::Folded => {
                // Folded text has no labels: one request per process (and thread).
                let mut bodies: BTreeMap<Vec<(String, String)>, BTreeMap<String, u64>> =
                    BTreeMap::new();
                for stack in &report.stacks {
                    *bodies
                        .entry(folded_labels(&base_labels, stack))
                        .or_default()
                        .entry(frames_line(&stack.frames))
                        .or_default() += stack.count;
                }
                bodies
                    .into_iter()
                    .map(|(labels_of, lines)| {
                        let name =
                            format!("{}.{profile_type}{}", self.config.name, labels(&labels_of));
                        let body = lines
                            .into_iter()
                            .map(|(line, count)| format!("{line} {count}\n"))
                            .collect();
                        Request {
                            query: common(name, "folded"),
                            body: Body::Folded(body),
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The labels of a folded request: `base`, then the stack's process (pid,
/// name, cgroup and container) and thread (with `--per-thread`).
fn folded_labels(base: &[(String, String)], stack: &StackReport) -> Vec<(String, String)> {
    let mut labels = base.to_vec();
    labels.push(("pid".into(), stack.pid.to_string()));
    labels.push(("process".into(), stack.comm.clone()));
    for (key, value) in stack
        .cgroup
        .as_deref()
        .map(pprof::cgroup_labels)
        .unwrap_or_default()
    {
        labels.push((key.into(), value));
    }
    if let Some((tid, thread)) = &stack.thread {
        labels.push(("tid".into(), tid.to_string()));
        labels.push(("thread".into(), thread.clone()));
    }
    labels
}

/// `{key=value,...}`, with the characters the name syntax reserves replaced.
fn labels(labels: &[(String, String)]) -> String {
    let clean = |s: &str| s.replace([',', '{', '}', '=', '"', '\n'], "_");
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Pyroscope's sample type configuration for our pprof sample types, in the
/// documented shape (units among samples, objects, bytes).
fn sample_type_config(mode: Mode) -> String {
    let entry = |display: &str| {
        serde_json::json!({
            "units": "samples",
            "aggregation": "sum",
            "display-name": display,
            "sampled": true,
        })
    };
    let config = match mode {
        Mode::Cpu => serde_json::json!({ "samples": entry("cpu") }),
        Mode::Wall => serde_json::json!({ "samples": entry("wall") }),
        Mode::OffCpu => serde_json::json!({
            "off_cpu": { "units": "samples", "aggregation": "sum",
                         "display-name": "off_cpu_nanoseconds", "sampled": false }
        }),
    };
    config.to_string()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
