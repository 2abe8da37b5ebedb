//! The non-test Rust sources under `src/`, with comments and test modules removed, so what
//! is left is what the compiler builds into the library.

use std::path::{Path, PathBuf};

/// One source file: its path from the crate root, its top-level module, and its code.
pub struct SourceFile {
    /// Path relative to the crate root, with `/` separators (`src/session/mod.rs`).
    pub path: String,
    /// The top-level module the file belongs to (`session`); None for lib.rs and main.rs.
    pub module: Option<String>,
    /// The code with comments and `#[cfg(test)] mod` blocks blanked (lines are kept, so
    /// line counts stay true to the file).
    pub code: Vec<String>,
    /// Lines of the file up to its test module (the size that counts against the budget).
    pub lines: usize,
}

/// Every non-test `.rs` file under `src/`, sorted by path.
pub fn files() -> Vec<SourceFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    collect(&root.join("src"), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(root)
                .ok()?
                .to_string_lossy()
                .replace('\\', "/");
            if is_test_path(&rel) {
                return None;
            }
            let text = std::fs::read_to_string(&p).ok()?;
            let code = strip(&text);
            Some(SourceFile {
                module: module_of(&rel),
                lines: code.len(),
                code,
                path: rel,
            })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files that hold only tests: `tests.rs` and anything under a `tests/` folder.
fn is_test_path(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    parts.last() == Some(&"tests.rs") || parts[..parts.len() - 1].contains(&"tests")
}

/// `src/session/mod.rs` and `src/session.rs` both belong to `session`.
fn module_of(rel: &str) -> Option<String> {
    let rest = rel.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    if rest.contains('/') {
        return Some(first.to_string());
    }
    let name = first.strip_suffix(".rs")?;
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The file's lines with comments blanked, cut before a trailing `#[cfg(test)] mod`.
fn strip(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut state = (false, false);
    for (i, line) in lines.iter().enumerate() {
        let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
        if line.trim() == "#[cfg(test)]"
            && (next.starts_with("mod ") || next.starts_with("pub mod "))
        {
            break;
        }
        out.push(strip_comments(line, &mut state));
    }
    out
}

/// Blanks `//` and `/* */` comments (outside string literals) from one line; `state` is
/// (inside a block comment, inside a string) carried from line to line.
fn strip_comments(line: &str, state: &mut (bool, bool)) -> String {
    let (in_block, in_str) = (&mut state.0, &mut state.1);
    let bytes = line.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if *in_block {
            if rest.starts_with(b"*/") {
                *in_block = false;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        if *in_str {
            if rest[0] == b'\\' {
                i += 2;
                continue;
            }
            *in_str = rest[0] != b'"';
        } else if let Some(len) = char_literal(rest) {
            i += len;
            continue;
        } else if rest.starts_with(b"//") {
            break;
        } else if rest.starts_with(b"/*") {
            *in_block = true;
            i += 2;
            continue;
        } else if rest[0] == b'"' {
            *in_str = true;
        }
        out.push(rest[0] as char);
        i += 1;
    }
    out
}

/// The length of a character literal such as `'"'` or `'\''` at the start of `rest`.
fn char_literal(rest: &[u8]) -> Option<usize> {
    match rest {
        [b'\'', b'\\', _, b'\'', ..] => Some(4),
        [b'\'', c, b'\'', ..] if *c != b'\\' => Some(3),
        _ => None,
    }
}
