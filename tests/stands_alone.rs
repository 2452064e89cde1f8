//! The repository stands alone: no file points at documents that live
//! outside it (a sibling checkout, a design note, an issue tracker), since
//! a reader of a clone cannot follow such a pointer.

use std::path::{Path, PathBuf};

/// What a pointer outside the repository looks like. Spelled in pieces so
/// that this file is not itself such a pointer.
const OUTSIDE: &[&str] = &[
    concat!("../", "shared"),
    concat!("DESIGN", ".md"),
    concat!("API", ".md"),
    concat!("STYLE", ".md"),
    concat!("terms-of-", "service.txt"),
];

/// Directories that hold no file of the project's own.
const SKIP_DIRS: &[&str] = &["target", ".git", "node_modules", ".venv", "__pycache__"];

const TEXT: &[&str] = &[
    "rs", "md", "toml", "sh", "py", "yml", "yaml", "sql", "json", "html", "txt",
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                files(&path, out);
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| TEXT.contains(&e))
        {
            out.push(path);
        }
    }
}

/// A tracker's numbering ("issue" and a number, with or without `#`),
/// meaningless in a clone.
fn cites_an_issue(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower.match_indices("issue ").any(|(i, m)| {
        let rest = lower[i + m.len()..].trim_start_matches('#');
        rest.chars().next().is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn no_file_points_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    files(root, &mut all);
    assert!(all.len() > 50, "walked too few files: {}", all.len());
    let mut found = Vec::new();
    for path in &all {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let pointer = OUTSIDE.iter().find(|p| line.contains(**p));
            if pointer.is_some() || cites_an_issue(line) {
                let rel = path.strip_prefix(root).unwrap_or(path);
                found.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "pointers outside the repository:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_issue_pattern_is_what_it_says() {
    assert!(cites_an_issue(concat!("see iss", "ue 9 item 5")));
    assert!(cites_an_issue(concat!("(Iss", "ue #12)")));
    assert!(!cites_an_issue("an issue with the lease"));
    assert!(!cites_an_issue("issues were fixed"));
}
