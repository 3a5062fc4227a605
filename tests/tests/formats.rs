//! Every output format, from one recorded fixture profile: recorded once as JSON, rendered
//! again with `tripod-bpf report`, and each rendering read by a consumer that did not come
//! from us where one is installable (go tool pprof, inferno), else checked against the
//! format's published required fields.

use std::{fs, path::Path, process::Command, time::Duration};

use serde_json::Value;
use tripod_tests::*;

/// `tripod-bpf report FILE -f FORMAT -o OUT`, checked to succeed; returns OUT.
fn report_as(recording: &Path, format: &str) -> std::path::PathBuf {
    let out_file = recording.with_extension(format);
    let out = run_tripod(&[
        "report",
        recording.to_str().unwrap(),
        "-f",
        format,
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert_success(&out);
    out_file
}

/// `go tool pprof ARGS FILE`, checked to succeed; its stdout.
fn go_pprof(go: &Path, args: &[&str], file: &Path) -> String {
    let mut cmd = Command::new(go);
    cmd.args(["tool", "pprof"]).args(args).arg(file);
    // pprof must not try to fetch or symbolize anything: the profile has it all.
    cmd.env("PPROF_BINARY_PATH", "/nonexistent");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stacks `go tool pprof -traces` prints, each leaf first, as function names.
fn pprof_traces(text: &str) -> Vec<Vec<String>> {
    text.split("-----------+-")
        .skip(1)
        .map(|block| {
            block
                .lines()
                .skip(1)
                .filter(|l| !l.contains(":  ")) // labels: `  pid:  42`
                .filter_map(|l| {
                    let l = l.trim();
                    // The first line of a stack carries the value: `404.04ms   inner`.
                    let name = l.split_once("   ").map_or(l, |(_, name)| name).trim();
                    (!name.is_empty()).then(|| name.trim_end_matches(" (inline)").to_string())
                })
                .collect()
        })
        .filter(|s: &Vec<String>| !s.is_empty())
        .collect()
}

#[test]
fn every_format_from_one_recording() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let recording = dir.path().join("recording.json");
    record_chain_to(&recording, "json");
    let leaf_first: Vec<String> = CHAIN.iter().rev().map(|s| s.to_string()).collect();

    // pprof, read by go tool pprof: the chain in order, leaf first, with its values.
    let pprof = report_as(&recording, "pprof");
    if let Some(go) = go_tool() {
        let traces = go_pprof(&go, &["-traces"], &pprof);
        assert!(traces.contains("Type: cpu"), "not a cpu profile:\n{traces}");
        let stacks = pprof_traces(&traces);
        assert!(
            stacks
                .iter()
                .any(|s| s.windows(leaf_first.len()).any(|w| w == leaf_first)),
            "no stack with {leaf_first:?} in go tool pprof -traces:\n{traces}"
        );
        let raw = go_pprof(&go, &["-raw"], &pprof);
        let mappings = raw.split("Mappings").nth(1).unwrap_or("");
        let chain_mapping = mappings
            .lines()
            .find(|l| l.contains("chain"))
            .unwrap_or_else(|| panic!("no mapping of the fixture in -raw:\n{raw}"));
        // address range/offset, file, build id (gcc links one by default), then [FN]...
        let build_id = chain_mapping.split_whitespace().nth(3).unwrap_or("");
        assert!(
            build_id.len() == 40 && build_id.chars().all(|c| c.is_ascii_hexdigit()),
            "the fixture's mapping has no build id: {chain_mapping}"
        );
        let top = go_pprof(&go, &["-top"], &pprof);
        assert!(
            top.lines().any(|l| l.trim_end().ends_with(" spin")),
            "spin is not in go tool pprof -top:\n{top}"
        );
    }

    // speedscope: the published schema's required fields, and the chain in one profile.
    let speedscope = report_as(&recording, "speedscope");
    let file: Value = serde_json::from_str(&fs::read_to_string(&speedscope).unwrap())
        .expect("speedscope output is JSON");
    for field in ["$schema", "shared", "profiles"] {
        assert!(!file[field].is_null(), "speedscope file without {field}");
    }
    assert_eq!(
        file["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let frames = file["shared"]["frames"].as_array().expect("shared.frames");
    assert!(
        frames.iter().all(|f| f["name"].is_string()),
        "a frame without a name"
    );
    let profiles = file["profiles"].as_array().expect("profiles");
    assert!(!profiles.is_empty(), "no profiles");
    let mut chain_found = false;
    for profile in profiles {
        for field in [
            "type",
            "name",
            "unit",
            "startValue",
            "endValue",
            "samples",
            "weights",
        ] {
            assert!(
                !profile[field].is_null(),
                "profile without {field}: {profile}"
            );
        }
        assert_eq!(profile["type"], "sampled");
        let samples = profile["samples"].as_array().unwrap();
        assert_eq!(samples.len(), profile["weights"].as_array().unwrap().len());
        chain_found |= samples.iter().any(|stack| {
            let names: Vec<&str> = stack
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    frames[i.as_u64().unwrap() as usize]["name"]
                        .as_str()
                        .unwrap()
                })
                .collect();
            names.windows(CHAIN.len()).any(|w| w == CHAIN)
        });
    }
    assert!(chain_found, "no speedscope sample has the chain");

    // folded, read by inferno (flamegraph.pl's port): every count lands in the graph.
    let folded = fs::read_to_string(report_as(&recording, "folded")).unwrap();
    assert_chain(&folded, "chain", CHAIN, 10, 0.5);
    let total: u64 = parse_folded(&folded).iter().map(|s| s.1).sum();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(
        &mut inferno::flamegraph::Options::default(),
        folded.lines(),
        &mut svg,
    )
    .unwrap_or_else(|e| panic!("inferno rejected the folded output: {e}"));
    let svg = String::from_utf8(svg).unwrap();
    assert!(
        svg.contains(&format!("all ({total} samples, 100%)")),
        "inferno did not count {total} samples"
    );

    // svg and log, our own renderings of the same profile.
    let svg = fs::read_to_string(report_as(&recording, "svg")).unwrap();
    assert!(
        svg.contains("<title>spin ("),
        "no spin frame in the flame graph"
    );
    let log = fs::read_to_string(report_as(&recording, "log")).unwrap();
    assert!(log.contains("Traceback (most recent call last):"));
    let json: Value = serde_json::from_str(
        fs::read_to_string(report_as(&recording, "json"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let original: Value =
        serde_json::from_str(fs::read_to_string(&recording).unwrap().trim()).unwrap();
    assert_eq!(
        json["stacks"], original["stacks"],
        "json -> report -> json changed the stacks"
    );
}

/// `-f pprof` straight from a recording (no JSON in between), and `report` refusing
/// what it cannot read with one line that says why.
#[test]
fn pprof_recording_and_report_errors() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.pb.gz");
    record_chain_to(&file, "pprof");
    if let Some(go) = go_tool() {
        let top = go_pprof(&go, &["-top"], &file);
        assert!(
            top.lines().any(|l| l.trim_end().ends_with(" spin")),
            "spin is not in go tool pprof -top:\n{top}"
        );
    }

    let newer = dir.path().join("newer.json");
    fs::write(&newer, "{\"version\": 99, \"kind\": \"recording\"}\n").unwrap();
    let not_json = dir.path().join("not.json");
    fs::write(&not_json, "{ Traceback (most recent call last):\n").unwrap();
    for (file, expected) in [
        (&newer, "newer tripod-bpf"),
        (&not_json, "line 1: not JSON"),
        (&dir.path().join("missing.json"), "cannot read"),
    ] {
        let out = run_tripod(&["report", file.to_str().unwrap()]);
        let stderr = stderr_text(&out);
        assert!(!out.status.success(), "report of {file:?} succeeded");
        assert!(stderr.contains(expected), "no {expected:?} in:\n{stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one line:\n{stderr}"
        );
    }
}
