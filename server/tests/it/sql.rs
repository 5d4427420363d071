//! Every SQL statement in `core/src` is prepared against the migrated schema, so a
//! statement naming a column or table that does not exist (or mistyping one) fails
//! here, not on the rare path that runs it.
//!
//! The statements are found in the source: every string literal that starts with
//! SELECT, INSERT, UPDATE, DELETE or WITH. `{NAME}` in a `format!` statement is
//! replaced by the string or number constant `NAME` defined in `core/src`; a dynamic
//! part must be such a constant (or listed in `EXPANSIONS`), so no statement escapes
//! the check. See ARCHITECTURE.md, "SQL".

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sqlx::Executor;

use crate::harness::*;

/// Placeholders bound to a local variable, and the constants it can hold.
const EXPANSIONS: &[(&str, &[&str])] = &[
    ("filter", &["RESEND_DELIVERY", "RESEND_NOTIFICATION", "RESEND_FAILED", "RESEND_EMAIL"]),
    ("table", &["AGED_IDEMPOTENCY_KEYS", "AGED_DEAD_LETTERS"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The string literals of a Rust source (escapes decoded, line continuations joined),
/// each with the identifier of the `const` it initialises, if any.
fn literals(src: &str) -> Vec<(Option<String>, String)> {
    let b: Vec<char> = src.chars().collect();
    let (mut i, mut out) = (0, Vec::new());
    while i < b.len() {
        match b[i] {
            '/' if b.get(i + 1) == Some(&'/') => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            '\'' if b.get(i + 2) == Some(&'\'') => i += 3,
            '\'' if b.get(i + 1) == Some(&'\\') && b.get(i + 3) == Some(&'\'') => i += 4,
            '"' => {
                let before: String = b[..i].iter().collect();
                let konst = before.trim_end().strip_suffix('=').and_then(|l| {
                    let line = l.rsplit('\n').next()?.trim();
                    let rest = line.strip_prefix("pub ").unwrap_or(line);
                    let rest = rest.strip_prefix("pub(crate) ").unwrap_or(rest);
                    let name = rest.strip_prefix("const ")?.split(':').next()?.trim();
                    Some(name.to_owned())
                });
                let mut s = String::new();
                i += 1;
                while i < b.len() && b[i] != '"' {
                    if b[i] == '\\' {
                        i += 1;
                        match b[i] {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            '0' => s.push('\0'),
                            '\n' => {
                                while i + 1 < b.len() && b[i + 1].is_whitespace() {
                                    i += 1;
                                }
                            }
                            c => s.push(c),
                        }
                    } else {
                        s.push(b[i]);
                    }
                    i += 1;
                }
                out.push((konst, s));
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn is_statement(s: &str) -> bool {
    let t = s.trim_start();
    ["SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH "].iter().any(|k| t.starts_with(k))
}

/// Replaces `{NAME}` placeholders (an identifier in braces; SQL's own braces, such as
/// `'{}'`, stay); one statement per combination of expansions.
fn expand(sql: &str, consts: &HashMap<String, String>) -> Result<Vec<String>, String> {
    let mut out = vec![sql.to_owned()];
    let mut from = 0;
    while let Some(start) = out[0][from..].find('{').map(|p| p + from) {
        let Some(end) = out[0][start..].find('}').map(|p| p + start) else { break };
        let name = out[0][start + 1..end].to_owned();
        let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            from = end + 1;
            continue;
        }
        let values: Vec<String> = if let Some(v) = consts.get(&name) {
            vec![v.clone()]
        } else if let Some((_, names)) = EXPANSIONS.iter().find(|(n, _)| *n == name) {
            names.iter().map(|n| consts.get(*n).cloned().ok_or(format!("no constant {n}"))).collect::<Result<_, _>>()?
        } else {
            return Err(format!("the placeholder {{{name}}} is neither a constant nor listed in EXPANSIONS"));
        };
        let placeholder = format!("{{{name}}}");
        let placeholder = placeholder.as_str();
        out = out.iter().flat_map(|s| values.iter().map(move |v| s.replacen(placeholder, v, 1))).collect();
        from = start;
    }
    Ok(out)
}

#[tokio::test]
async fn every_statement_prepares_against_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut consts: HashMap<String, String> = HashMap::new();
    let mut statements: Vec<(String, String)> = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(f).unwrap();
        for line in src.lines() {
            // Number constants, such as `pub const RESEND_PAGE: usize = 1000;`.
            let l = line.trim().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
            if let Some(rest) = l.strip_prefix("const ") {
                if let Some((name, value)) = rest.split_once(':').and_then(|(n, r)| Some((n, r.split_once('=')?.1))) {
                    let v = value.trim().trim_end_matches(';').replace('_', "");
                    if v.parse::<i64>().is_ok() {
                        consts.insert(name.trim().to_owned(), v);
                    }
                }
            }
        }
        let name = f.strip_prefix(&root).unwrap().display().to_string();
        for (konst, lit) in literals(&src) {
            if let Some(k) = konst {
                consts.insert(k, lit.clone());
            }
            if is_statement(&lit) {
                statements.push((name.clone(), lit));
            }
        }
    }
    assert!(statements.len() > 40, "the scan found only {} statements", statements.len());

    let db = fresh_database().await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    herald_core::db::migrate(&pool).await.unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, sql) in &statements {
        match expand(sql, &consts) {
            Err(e) => failures.push(format!("{file}: {e}\n{sql}")),
            Ok(all) => {
                for s in all {
                    checked += 1;
                    if let Err(e) = (&pool).prepare(s.as_str()).await {
                        failures.push(format!("{file}: {e}\n{s}"));
                    }
                }
            }
        }
    }
    println!("prepared {checked} statements from {} files", files.len());
    assert!(failures.is_empty(), "{} statements do not prepare:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn the_scanner_reads_literals_and_constants() {
    let src = "const A: &str = \"x, y\";\n// \"not this\"\nlet c = '\"';\nlet q = \"SELECT {A} \\\n    FROM t\";";
    let lits = literals(src);
    assert_eq!(lits[0], (Some("A".to_owned()), "x, y".to_owned()));
    assert_eq!(lits[1].1, "SELECT {A} FROM t");
    assert_eq!(lits.len(), 2);
    let consts = HashMap::from([("A".to_owned(), "x, y".to_owned())]);
    assert_eq!(expand(&lits[1].1, &consts).unwrap(), vec!["SELECT x, y FROM t".to_owned()]);
    assert!(expand("SELECT {nope}", &consts).is_err());
    assert_eq!(expand("SELECT '{}'::text[]", &consts).unwrap(), vec!["SELECT '{}'::text[]".to_owned()]);
}

/// What a statement writes to `deliveries.status`: `Some("update")` or `Some("insert")`.
fn writes_delivery_status(sql: &str) -> Option<&'static str> {
    let s = sql.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let mut rest = s.as_str();
    while let Some(i) = rest.find("update deliveries") {
        let after = &rest[i + "update deliveries".len()..];
        let set = after.find(" set ").map(|j| &after[j + 5..]).unwrap_or("");
        let end = [" from ", " where ", " returning "].iter().filter_map(|k| set.find(k)).min().unwrap_or(set.len());
        let assigned = &set[..end];
        if assigned.split(',').any(|a| a.trim().starts_with("status =") || a.trim().starts_with("status=")) {
            return Some("update");
        }
        rest = after;
    }
    let mut rest = s.as_str();
    while let Some(i) = rest.find("insert into deliveries") {
        let after = &rest[i + "insert into deliveries".len()..];
        let cols = after.find('(').zip(after.find(')')).map(|(a, b)| &after[a + 1..b]).unwrap_or("");
        if cols.split(',').any(|c| c.trim() == "status") {
            return Some("insert");
        }
        rest = after;
    }
    None
}

/// A delivery's status changes in one place: only `delivery_status.rs` updates it, and
/// only the accepting statement sets the first one (see that module's table).
#[test]
fn a_delivery_status_is_written_in_one_place() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let (mut found, mut strays) = (0, Vec::new());
    for f in &files {
        let name = f.strip_prefix(&root).unwrap().display().to_string();
        for (_, lit) in literals(&std::fs::read_to_string(f).unwrap()) {
            match (writes_delivery_status(&lit), name.as_str()) {
                (None, _) => {}
                (Some(_), "delivery_status.rs") | (Some("insert"), "notifications/accept.rs") => found += 1,
                (Some(how), _) => strays.push(format!("{name} ({how}): {lit}")),
            }
        }
    }
    assert!(found >= 9, "the scan found only {found} status writes in their place");
    assert!(strays.is_empty(), "a delivery's status is written outside delivery_status.rs:\n{}", strays.join("\n\n"));
    assert_eq!(
        writes_delivery_status("UPDATE deliveries d SET lease_until = now(), status = 'x' WHERE"),
        Some("update")
    );
    assert_eq!(writes_delivery_status("UPDATE deliveries SET lease_until = now() WHERE status = 'x'"), None);
    assert_eq!(writes_delivery_status("INSERT INTO deliveries (id, status) VALUES"), Some("insert"));
}
