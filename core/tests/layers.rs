//! The layer rule of ARCHITECTURE.md, checked: edges (the API, the dispatchers,
//! background jobs) call the domain (notifications, webhooks, API keys, templates),
//! which calls the base (store, bus, adapters, vocabulary). Nothing below points up.

use std::path::{Path, PathBuf};

/// Top-level modules of `herald-core`, by layer (lowest first).
const BASE: &[&str] = &[
    "audit",
    "bus",
    "cache",
    "config",
    "db",
    "delivery_status",
    "dkim",
    "error",
    "metrics",
    "model",
    "reference",
    "retry",
    "secrets",
    "smtp",
    "ssrf",
    "supervise",
    "transform",
];
const DOMAIN: &[&str] = &[
    "access",
    "apikeys",
    "auditing",
    "catalog",
    "email_feedback",
    "identity",
    "notifications",
    "rekey",
    "relay_webhooks",
    "suppressions",
    "templates",
    "tracking",
    "unsubscribe",
    "webhooks",
];
const EDGE: &[&str] = &["api", "dispatch", "doctor", "inbound", "problem", "retention"];

fn layer(module: &str) -> Option<usize> {
    [BASE, DOMAIN, EDGE].iter().position(|l| l.contains(&module))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`webhooks/signing.rs` → `webhooks`).
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// Every `crate::<module>` a source names.
fn uses(src: &str) -> Vec<String> {
    src.match_indices("crate::")
        .map(|(i, _)| src[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn nothing_below_points_up() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut violations = Vec::new();
    for f in &all {
        let module = module_of(&root, f);
        if module == "lib" {
            continue;
        }
        let own =
            layer(&module).unwrap_or_else(|| panic!("module '{module}' is in no layer: add it to tests/layers.rs"));
        for used in uses(&std::fs::read_to_string(f).unwrap()) {
            let theirs = layer(&used).unwrap_or_else(|| panic!("{}: module '{used}' is in no layer", f.display()));
            if theirs > own {
                violations.push(format!("{} ({module}) uses crate::{used}", f.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(violations.is_empty(), "lower layers must not use higher ones:\n{}", violations.join("\n"));
}

#[test]
fn the_import_scan_sees_paths() {
    assert_eq!(uses("use crate::bus::{self, Topic};\n x = crate::metrics::x();"), vec!["bus", "metrics"]);
}
