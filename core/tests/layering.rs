//! Data flows one way: no module of the core imports one from a later stage. Read from the
//! sources themselves, so that a new import against the flow fails here, not in review.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// The stages in the order data flows; a module may use those before it (and the crate root's
/// helpers), never one after it. `memory` bounds them all, so it comes first.
const STAGES: [&str; 8] = [
    "memory",
    "sources",
    "streams",
    "decoder",
    "correlation",
    "spans",
    "journeys",
    "pipeline",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The stage a file of `src/` belongs to (its first path component, without `.rs`).
fn stage_of(src: &Path, file: &Path) -> String {
    let first = file.strip_prefix(src).unwrap().components().next().unwrap();
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// Stages named after `crate::` in `text`: in paths (`crate::spans::Span`) and in grouped
/// imports (`use crate::{spans::Span, memory}`), at the group's top level.
fn crate_modules_used(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        used.insert(name);
                    }
                    _ => {}
                }
            }
        } else {
            used.insert(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    used
}

#[test]
fn no_stage_imports_a_later_one() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut against_the_flow = Vec::new();
    let mut stages_read = BTreeSet::new();
    for file in &files {
        // Tests may reach downstream to check what a stage's output becomes.
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let stage = stage_of(&src, file);
        let Some(rank) = STAGES.iter().position(|s| *s == stage) else {
            assert_eq!(
                stage,
                "lib",
                "{}: a stage missing from STAGES",
                file.display()
            );
            continue;
        };
        stages_read.insert(STAGES[rank]);
        let text = std::fs::read_to_string(file).unwrap();
        // A file's own unit tests, at its end, are tests too.
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
        for used in crate_modules_used(code) {
            if let Some(used_rank) = STAGES.iter().position(|s| *s == used)
                && used_rank > rank
            {
                against_the_flow.push(format!("{} uses crate::{used}", file.display()));
            }
        }
    }
    assert_eq!(
        stages_read,
        BTreeSet::from(STAGES),
        "every stage's sources read"
    );
    assert!(against_the_flow.is_empty(), "{against_the_flow:#?}");
}

#[test]
fn grouped_and_plain_paths_are_both_read() {
    let text = "use crate::{\n    memory::{HeapSize, Shares},\n    spans::Span,\n};\nlet x = crate::journeys::Journal::new();";
    let used = crate_modules_used(text);
    assert_eq!(
        used,
        ["journeys", "memory", "spans"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
