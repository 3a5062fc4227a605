//! `--push`: profiles sent to a local HTTP receiver on 127.0.0.1 that checks each request
//! against Pyroscope's documented ingest API (POST /ingest; name, from, until, sampleRate,
//! spyName, format; pprof as multipart/form-data with `profile` and `sample_type_config`).

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
};

use tripod_tests::*;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// The status the receiver answered.
    status: u16,
}

/// An HTTP/1.1 server on 127.0.0.1 that records requests; the first `fail_first` get 503.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                // One connection at a time is enough for one client thread.
                let _ = serve(stream, &seen, fail_first);
            }
        });
        Receiver { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Request>>, fail_first: usize) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("").to_string();
        let target = words.next().unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let body = if headers
            .get("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
            body
        } else {
            let length = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            body
        };
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect();
        let mut seen = seen.lock().unwrap();
        let status = if seen.len() < fail_first { 503 } else { 200 };
        seen.push(Request {
            method,
            path: path.to_string(),
            query,
            headers,
            body,
            status,
        });
        drop(seen);
        let reason = if status == 200 {
            "OK"
        } else {
            "Service Unavailable"
        };
        write!(
            writer,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n"
        )?;
        writer.flush()?;
    }
}

/// Percent-decoding of a query component (`+` is a space in forms).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The parts of a multipart/form-data body, by field name.
fn form_parts(content_type: &str, body: &[u8]) -> HashMap<String, Vec<u8>> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .unwrap_or_else(|| panic!("no boundary in {content_type}"))
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let mut parts = HashMap::new();
    let text = body;
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some(at) = find(&text[i..], delimiter.as_bytes()) {
        starts.push(i + at);
        i += at + delimiter.len();
    }
    for w in starts.windows(2) {
        let part = &text[w[0] + delimiter.len()..w[1]];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let Some(split) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..split]).to_string();
        let content = &part[split + 4..];
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let name = head
            .split(';')
            .find_map(|p| p.trim().strip_prefix("name="))
            .map(|n| {
                n.split(['\r', '\n'])
                    .next()
                    .unwrap()
                    .trim_matches('"')
                    .to_string()
            })
            .unwrap_or_default();
        parts.insert(name, content.to_vec());
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks the query parameters Pyroscope requires and those we always send.
fn check_query(request: &Request, format: &str) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/ingest");
    let q = &request.query;
    for key in ["name", "from", "until", "sampleRate", "spyName", "format"] {
        assert!(q.contains_key(key), "no {key} in {q:?}");
    }
    let from: i64 = q["from"].parse().expect("from is a UNIX time");
    let until: i64 = q["until"].parse().expect("until is a UNIX time");
    assert!(
        from > 1_600_000_000 && from < until,
        "from {from} until {until}"
    );
    assert_eq!(q["sampleRate"], "99");
    assert_eq!(q["spyName"], "tripod-bpf");
    assert_eq!(q["format"], format);
    let name = &q["name"];
    assert!(name.contains("host="), "no host label in {name}");
    assert!(name.contains("env=ci"), "no --push-label in {name}");
    assert_eq!(
        request.headers.get("x-scope-orgid").map(String::as_str),
        Some("tenant-1"),
        "no --push-header"
    );
}

/// Samples the chain fixture for `seconds`, a report every second pushed to `receiver`
/// with a label and a header that `check_query` looks for; returns its pid and the run.
fn push_chain(
    receiver: &Receiver,
    seconds: &str,
    extra: &[&str],
) -> (String, std::process::Output) {
    let fx = Fixture::start(CHAIN_FP, &[]);
    let pid = fx.pid().to_string();
    let mut args = vec![
        "--pid",
        &pid,
        "-d",
        seconds,
        "-i",
        "1",
        "--push",
        &receiver.url,
    ];
    args.extend([
        "--push-label",
        "env=ci",
        "--push-header",
        "X-Scope-OrgID: tenant-1",
    ]);
    args.extend(extra);
    let out = run_tripod(&args);
    (pid, out)
}

#[test]
fn pushes_pprof_with_retries() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let receiver = Receiver::start(1);
    let (pid, out) = push_chain(&receiver, "3.5", &[]);
    assert_success(&out);
    let stderr = stderr_text(&out);
    let requests = receiver.requests();
    assert!(
        requests.len() >= 3,
        "{} requests:\n{stderr}",
        requests.len()
    );
    assert_eq!(requests[0].status, 503);
    // The interval the server refused was sent again, not lost.
    let first = (&requests[0].query["from"], &requests[0].query["until"]);
    assert!(
        requests[1..]
            .iter()
            .any(|r| (&r.query["from"], &r.query["until"]) == first && r.status == 200),
        "the refused interval was not retried: {:?}",
        requests
            .iter()
            .map(|r| (&r.query["from"], r.status))
            .collect::<Vec<_>>()
    );
    let accepted = requests.iter().filter(|r| r.status == 200).count();
    assert!(
        stderr.contains(&format!("pushed {accepted} profiles to {}", receiver.url)),
        "no `pushed {accepted} profiles` line:\n{stderr}"
    );
    assert!(
        !stderr.contains("Writing output to: /"),
        "--push without -o wrote a file:\n{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut chain_seen = false;
    for (i, request) in requests.iter().enumerate() {
        check_query(request, "pprof");
        assert!(
            !request.query["name"].contains(".cpu"),
            "pprof names are prefixes: {}",
            request.query["name"]
        );
        let content_type = &request.headers["content-type"];
        assert!(
            content_type.starts_with("multipart/form-data"),
            "{content_type}"
        );
        let parts = form_parts(content_type, &request.body);
        let profile = &parts["profile"];
        assert_eq!(&profile[..2], &[0x1f, 0x8b], "profile is not gzipped");
        let config: serde_json::Value = serde_json::from_slice(&parts["sample_type_config"])
            .expect("sample_type_config is JSON");
        for (_, entry) in config.as_object().unwrap() {
            assert!(["samples", "objects", "bytes"].contains(&entry["units"].as_str().unwrap()));
            assert!(["sum", "average"].contains(&entry["aggregation"].as_str().unwrap()));
            assert!(entry["display-name"].is_string() && entry["sampled"].is_boolean());
        }
        if let Some(go) = go_tool() {
            let file = dir.path().join(format!("{i}.pb.gz"));
            std::fs::write(&file, profile).unwrap();
            let mut cmd = std::process::Command::new(go);
            cmd.args(["tool", "pprof", "-traces"]).arg(&file);
            let traces = stdout_text(&run_with_timeout(cmd, RUN_TIMEOUT));
            let names: Vec<&str> = traces
                .lines()
                .map(|l| l.split("   ").last().unwrap_or("").trim())
                .collect();
            chain_seen |= names.join(";").contains("spin;gamma;beta;alpha;main");
            assert!(
                traces.contains(&format!("pid:  {pid}")),
                "no pid label:\n{traces}"
            );
        } else {
            chain_seen = true;
        }
    }
    assert!(chain_seen, "no pushed profile has the fixture's chain");
}

#[test]
fn pushes_folded_per_process() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let receiver = Receiver::start(0);
    let (pid, out) = push_chain(
        &receiver,
        "2.5",
        &["--push-format", "folded", "-f", "folded", "-o", "/dev/null"],
    );
    assert_success(&out);
    let requests = receiver.requests();
    assert!(requests.len() >= 2, "{} requests", requests.len());
    let mut total = 0;
    for request in &requests {
        check_query(request, "folded");
        let name = &request.query["name"];
        assert!(name.starts_with("tripod-bpf.cpu{"), "{name}");
        assert!(
            name.contains(&format!("pid={pid}")) && name.contains("process=chain"),
            "{name}"
        );
        let body = String::from_utf8(request.body.clone()).expect("folded is text");
        for line in body.lines() {
            let (stack, count) = line.rsplit_once(' ').expect("`stack count` lines");
            total += count.parse::<u64>().expect("a count");
            assert!(
                !stack.starts_with("chain;"),
                "the process is a label, not a frame: {line}"
            );
        }
    }
    assert!(total > 50, "only {total} samples pushed");
    assert!(
        requests
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("main;alpha;beta;gamma;spin")),
        "no pushed stack has the chain"
    );
}
