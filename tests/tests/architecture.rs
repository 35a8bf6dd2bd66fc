//! ARCHITECTURE.md's dependency table is the rule: every workspace package has a row, depends
//! directly only on the pgset crates its row allows, and never (directly or through another
//! crate) on a crate its row forbids. Read from `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};

use pgset_command::HostCommand;
use pgset_tests::workspace_root;
use serde_json::Value;

/// One row: the pgset crates a package may depend on, and the crates it must never pull in.
#[derive(Debug)]
struct Rule {
    may: BTreeSet<String>,
    never: BTreeSet<String>,
}

fn words(cell: &str) -> BTreeSet<String> {
    cell.split(',')
        .map(|w| w.trim().trim_matches('`').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

/// The table between the dependency-table markers of ARCHITECTURE.md.
fn rules() -> BTreeMap<String, Rule> {
    let text = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md"))
        .expect("read ARCHITECTURE.md");
    let start = text
        .find("<!-- dependency-table:start -->")
        .expect("the table's start marker");
    let end = text
        .find("<!-- dependency-table:end -->")
        .expect("the table's end marker");
    let mut rules = BTreeMap::new();
    for line in text[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
        assert_eq!(cells.len(), 5, "a row has 5 cells: {line}");
        let name = cells[0].trim().trim_matches('`').to_string();
        let rule = Rule {
            may: words(cells[3]),
            never: words(cells[4]),
        };
        assert!(rules.insert(name.clone(), rule).is_none(), "{name} twice");
    }
    rules
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = HostCommand::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(workspace_root().join("Cargo.toml"))
        .quiet()
        .output()
        .expect("run cargo metadata");
    assert!(out.success(), "cargo metadata: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("cargo metadata's JSON")
}

/// Package id → (name, ids it depends on through normal or build edges).
fn graph(meta: &Value) -> BTreeMap<String, (String, Vec<String>)> {
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap().to_string();
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null() || k["kind"] == "build")
                })
                .map(|d| d["pkg"].as_str().unwrap().to_string())
                .collect();
            (id.clone(), (names[id.as_str()].to_string(), deps))
        })
        .collect()
}

fn closure(graph: &BTreeMap<String, (String, Vec<String>)>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(id) = todo.pop() {
        for dep in &graph[&id].1 {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen.iter().map(|id| graph[id].0.clone()).collect()
}

#[test]
fn every_crate_depends_only_on_what_architecture_md_allows() {
    let rules = rules();
    let meta = metadata();
    let graph = graph(&meta);
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for id in &members {
        let (name, deps) = &graph[*id];
        names.insert(name.clone());
        let Some(rule) = rules.get(name) else {
            problems.push(format!("{name} has no row in ARCHITECTURE.md"));
            continue;
        };
        for dep in deps {
            let dep = &graph[dep].0;
            if (dep.starts_with("pgset-") || dep == "xtask") && !rule.may.contains(dep) {
                problems.push(format!(
                    "{name} depends on {dep}, which its row does not allow"
                ));
            }
        }
        let all = closure(&graph, id);
        for never in &rule.never {
            if all.contains(never) {
                problems.push(format!("{name} pulls in {never}, which its row forbids"));
            }
        }
    }
    for row in rules.keys() {
        if !names.contains(row) {
            problems.push(format!(
                "ARCHITECTURE.md has a row for {row}, no such package"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_table_catches_a_forbidden_edge() {
    // The rule's own check on a graph with one bad edge: a table that allowed everything would
    // make the test above pass whatever the code did.
    let graph: BTreeMap<String, (String, Vec<String>)> = [
        (
            "a".to_string(),
            ("xtask".to_string(), vec!["b".to_string()]),
        ),
        (
            "b".to_string(),
            ("pgset-deploy".to_string(), vec!["c".to_string()]),
        ),
        ("c".to_string(), ("kube".to_string(), vec![])),
    ]
    .into();
    let all = closure(&graph, "a");
    assert!(
        all.contains("kube") && all.contains("pgset-deploy"),
        "{all:?}"
    );
    let rules = rules();
    let xtask = &rules["xtask"];
    assert!(!xtask.may.contains("pgset-deploy"));
    assert!(xtask.never.contains("kube"));
}
