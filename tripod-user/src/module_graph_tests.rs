//! The modules form no circle (ARCHITECTURE.md): a test that reads the
//! crate's own sources, collects which top-level module names which other
//! one through `crate::` paths (in code, not in comments or test modules),
//! and fails naming a cycle if there is one. Code after a file's test
//! module is not read: clippy's `items_after_test_module` (in the
//! workspace lints) keeps test modules last.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Top-level module -> the top-level modules its code names.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir)
        .expect("readable source directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file: without comment lines and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module names that follow `crate::` in `code`, grouped imports
/// (`crate::{a::X, b}`) included.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find("};").unwrap_or(group.len())];
            // Each item of the group starts after `{`, `,` or whitespace.
            for item in group.split([',', '{', '}']) {
                names.extend(first_word(item.trim()));
            }
        } else {
            names.extend(first_word(rest));
        }
    }
    names
}

fn first_word(text: &str) -> Option<String> {
    let word: String = text
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
        .collect();
    (!word.is_empty()).then_some(word)
}

/// The crate's module graph, by top-level module.
fn graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut graph = Graph::new();
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        let top = relative.components().next().expect("a file");
        let top = top
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // Test modules in files of their own (`x_tests.rs`, `x/tests.rs`)
        // are not part of the graph, like those inside a file.
        let test_file = file.file_stem().is_some_and(|s| s == "tests");
        if matches!(top.as_str(), "lib" | "main") || top.ends_with("_tests") || test_file {
            continue;
        }
        let text = fs::read_to_string(file).expect("readable source");
        graph.entry(top.clone()).or_default().extend(
            named_modules(&code(&text))
                .into_iter()
                .filter(|m| *m != top),
        );
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for named in graph.values_mut() {
        named.retain(|m| known.contains(m));
    }
    graph
}

/// A cycle through `start`, if one exists (depth-first search).
fn cycle_from(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((module, path)) = stack.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if next == start {
                return Some([path.clone(), vec![start.to_owned()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn no_module_depends_on_one_that_depends_on_it() {
    let graph = graph();
    assert!(graph.len() > 20, "too few modules found: {graph:?}");
    assert!(
        graph["model"].is_empty(),
        "model must stay a leaf: {:?}",
        graph["model"]
    );
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("modules in a circle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_graph_reader_sees_grouped_imports_and_skips_comments() {
    let text = "use crate::{model::{Frame, FrameKind}, stack::Gap};\n\
                // crate::report in a comment\n\
                fn f() { crate::text::escape_controls(\"\"); }\n";
    let names = named_modules(&code(text));
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["model", "stack", "text"]
    );
    let mut circle = Graph::new();
    circle.insert("a".into(), ["b".to_owned()].into());
    circle.insert("b".into(), ["a".to_owned()].into());
    assert_eq!(
        cycle_from(&circle, "a"),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
