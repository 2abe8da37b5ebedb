//! File and function sizes of the non-test code: the budgets ARCHITECTURE.md states.

use super::source::SourceFile;

/// No non-test file may be longer (lines up to its test module).
pub const MAX_FILE_LINES: usize = 500;
/// Nine functions in ten are at most this long (lines from `fn` to its closing brace).
pub const MAX_FUNCTION_P90: usize = 40;

/// What [`measure`] found.
pub struct Report {
    pub functions: usize,
    pub median: usize,
    pub p90: usize,
    /// (where, lines) of the longest function.
    pub longest: (String, usize),
    /// (path, lines) of each file over [`MAX_FILE_LINES`].
    pub large_files: Vec<(String, usize)>,
}

/// Measures every function body (`fn … {` to its matching `}`) and every file.
pub fn measure(files: &[SourceFile]) -> Report {
    let mut lengths: Vec<(usize, String)> = Vec::new();
    for file in files {
        for (start, len) in functions(&file.code) {
            lengths.push((len, format!("{}:{}", file.path, start + 1)));
        }
    }
    lengths.sort();
    let at = |q: f64| {
        let i = ((lengths.len() as f64 * q).ceil() as usize).clamp(1, lengths.len().max(1));
        lengths.get(i - 1).map_or(0, |l| l.0)
    };
    let longest = lengths
        .last()
        .map_or((String::new(), 0), |(n, at)| (at.clone(), *n));
    Report {
        functions: lengths.len(),
        median: at(0.5),
        p90: at(0.9),
        longest,
        large_files: files
            .iter()
            .filter(|f| f.lines > MAX_FILE_LINES)
            .map(|f| (f.path.clone(), f.lines))
            .collect(),
    }
}

/// (first line, length in lines) of each function with a body.
fn functions(code: &[String]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, line) in code.iter().enumerate() {
        if !declares_fn(line) {
            continue;
        }
        if let Some(end) = body_end(code, i) {
            out.push((i, end - i + 1));
        }
    }
    out
}

/// True for a line that starts a function item (`pub(crate) async fn name…`).
fn declares_fn(line: &str) -> bool {
    let mut words = line.split_whitespace();
    for word in words.by_ref() {
        match word {
            "fn" => return true,
            "pub" | "async" | "const" | "unsafe" | "extern" | "default" => {}
            w if w.starts_with("pub(") => {}
            _ => return false,
        }
    }
    false
}

/// The line of the brace that closes the body opened after line `start`; None for a
/// declaration without a body (a trait method ending in `;`).
fn body_end(code: &[String], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut parens = 0usize;
    let mut opened = false;
    for (i, line) in code.iter().enumerate().skip(start) {
        for c in line.chars() {
            match c {
                '(' | '[' if !opened => parens += 1,
                ')' | ']' if !opened => parens = parens.saturating_sub(1),
                ';' if !opened && parens == 0 => return None,
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    if opened && depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
    }
    None
}
