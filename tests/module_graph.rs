//! The layering of `src/`: which top-level module may use which. Each module is given a layer, and a
//! module may only use modules of its own layer or below, never one above, and the uses form no cycle.
//! A new module must be given a layer here, which is where its place in the design gets decided.
//!
//! Uses are read from the source text: every `crate::<module>` (and, in `main.rs`, `egress_authz::`)
//! path outside comments, including the names in a `crate::{a, b}` group.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. `policy` is pure decision logic; the adapters build up to the binary's `main`.
/// `cli` holds only argument types (it names the log format and decision-log mode it parses into),
/// which `commands` and `app` take and `main` dispatches.
const LAYERS: &[&[&str]] = &[
    &["policy"],
    &["decision_log", "listener", "telemetry", "metrics"],
    &["traffic"],
    &["reload", "watch"],
    &["grpc"],
    &["admin_http"],
    &["audit", "cli", "suggest", "rule_tests", "diff", "query"],
    &["commands", "app"],
    &["main"],
];

/// Module name → the modules it uses (itself excluded).
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn src_modules_respect_the_layers_and_form_no_cycle() {
    let graph = read_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 10, "too few modules found: {graph:?}");
    let problems = check(&graph, LAYERS);
    assert!(
        problems.is_empty(),
        "module graph of src/:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_reports_upward_uses_cycles_and_unplaced_modules() {
    let graph: Graph = [
        ("a", &["b"][..]),
        ("b", &["a"][..]),
        ("low", &["high"][..]),
        ("high", &[][..]),
        ("stray", &[][..]),
    ]
    .into_iter()
    .map(|(from, to)| {
        (
            from.to_owned(),
            to.iter().map(|t| (*t).to_owned()).collect(),
        )
    })
    .collect();
    let problems = check(&graph, &[&["low", "a", "b"], &["high"]]);
    let text = problems.join("\n");
    assert!(text.contains("low uses high"), "{text}");
    assert!(text.contains("cycle: a -> b -> a"), "{text}");
    assert!(text.contains("stray has no layer"), "{text}");
    assert_eq!(problems.len(), 3, "{text}");
}

/// Every violation of `layers` in `graph`, as one line each.
fn check(graph: &Graph, layers: &[&[&str]]) -> Vec<String> {
    let layer_of: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(index, names)| names.iter().map(move |name| (*name, index)))
        .collect();
    let mut problems = Vec::new();
    for (module, uses) in graph {
        let Some(&own) = layer_of.get(module.as_str()) else {
            problems.push(format!("{module} has no layer in LAYERS"));
            continue;
        };
        for used in uses {
            if layer_of
                .get(used.as_str())
                .is_some_and(|&layer| layer > own)
            {
                problems.push(format!(
                    "{module} uses {used}, which is in a layer above it"
                ));
            }
        }
    }
    problems.extend(
        cycles(graph)
            .into_iter()
            .map(|cycle| format!("cycle: {}", cycle.join(" -> "))),
    );
    problems
}

/// One cycle through each module that starts one not already reported, found by depth-first search.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn visit<'g>(
        graph: &'g Graph,
        module: &'g str,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(start) = path.iter().position(|m| *m == module) {
            let mut cycle: Vec<String> = path[start..].iter().map(|m| (*m).to_owned()).collect();
            cycle.push(module.to_owned());
            found.push(cycle);
            return;
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for used in graph.get(module).into_iter().flatten() {
            visit(graph, used, path, done, found);
        }
        path.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(graph, module, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// The uses between the top-level modules of the crate at `src`.
fn read_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect_rs_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|file| top_module(src, file))
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(module) = top_module(src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for used in used_modules(&text) {
            if used != module && modules.contains(&used) {
                uses.insert(used);
            }
        }
    }
    graph
}

fn collect_rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/grpc/admin.rs` → `grpc`; `src/main.rs` → `main`. `lib.rs` only declares the modules: none.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib").then(|| name.to_owned())
}

/// The first path segment after every `crate::` or `egress_authz::` in `text`, comments left out.
fn used_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n");
    let mut used = BTreeSet::new();
    for prefix in ["crate::", "egress_authz::"] {
        for (at, _) in code.match_indices(prefix) {
            let preceded_by_ident = code[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded_by_ident {
                continue;
            }
            let rest = &code[at + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                used.extend(group_items(group).filter_map(|item| first_ident(item.trim())));
            } else {
                used.extend(first_ident(rest));
            }
        }
    }
    used
}

/// The top-level items of a `{a::{b, c}, d}` group, given the text after its `{`.
fn group_items(group: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0;
    let mut start = 0;
    let mut items = Vec::new();
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..at]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.into_iter()
}

fn first_ident(path: &str) -> Option<String> {
    let end = path
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(path.len());
    (end > 0).then(|| path[..end].to_owned())
}
