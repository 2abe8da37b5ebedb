//! A small fuzz engine for the parsers of client bytes, on the stable toolchain (cargo-fuzz
//! needs nightly, which this project does not build with): inputs from a corpus kept in the
//! repository (`tests/fuzz_corpus/<target>/`), mutated at random with byte edits, length
//! fields set to edge values and pieces of the protocol, then checked by a target. A finding
//! is a panic, a broken invariant (the target's `check` returns `Err`), or an input whose
//! peak allocation exceeds the target's bound. Targets: [`codec`], [`startup`] here and
//! `crate::auth::fuzz` (SCRAM); `examples/fuzz` runs any of them for as long as asked and
//! `tests/fuzz.rs` runs each for a few seconds.

pub mod codec;
pub mod startup;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One fuzz target: a parser of client input with the invariants it must keep.
pub struct Target {
    /// The name on the command line and of the corpus directory.
    pub name: &'static str,
    /// Checks one input: `Ok` names the outcome reached (counted, so a run shows what it
    /// exercised), `Err` describes a broken invariant.
    pub check: fn(&[u8]) -> Result<&'static str, String>,
    /// The most bytes one input may have allocated at once while checked.
    pub alloc_bound: fn(&[u8]) -> usize,
    /// Seeds built in code (valid messages of the target's kinds), written to the corpus.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Pieces the mutator inserts: what this target's inputs are made of.
    pub dictionary: &'static [&'static [u8]],
}

/// Measures the peak bytes allocated while a closure runs (0 when not measured: only a
/// binary with a counting global allocator can, see `examples/fuzz/alloc.rs`).
pub type Probe<'a> = &'a dyn Fn(&mut dyn FnMut()) -> usize;

/// A probe that measures nothing.
pub fn no_probe(f: &mut dyn FnMut()) -> usize {
    f();
    0
}

/// What one run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs checked.
    pub tried: u64,
    /// How often each outcome was reached.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// The largest peak allocation seen for one input, in bytes.
    pub peak: usize,
    /// Inputs that broke an invariant, with why (the first [`MAX_FINDINGS`]).
    pub findings: Vec<(Vec<u8>, String)>,
}

/// Findings kept per run; one bug tends to be found many times.
pub const MAX_FINDINGS: usize = 20;
/// Inputs are cut to this length.
const MAX_INPUT: usize = 16 * 1024;

/// Checks one input under the target's invariants, a panic and the allocation bound included.
pub fn check_one(t: &Target, input: &[u8], probe: Probe) -> (Result<&'static str, String>, usize) {
    let mut result = Err(String::new());
    let peak = probe(&mut || {
        result = catch_unwind(AssertUnwindSafe(|| (t.check)(input)))
            .unwrap_or_else(|p| Err(format!("panic: {}", panic_text(&p))));
    });
    let bound = (t.alloc_bound)(input);
    if result.is_ok() && peak > bound {
        result = Err(format!("allocated {peak} bytes at peak, bound {bound}"));
    }
    (result, peak)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string payload)".into())
}

/// Runs `t` from `seed` over mutations of `corpus` until `until(tried)` (asked every 64 inputs).
pub fn run(
    t: &Target,
    corpus: &[Vec<u8>],
    seed: u64,
    probe: Probe,
    mut until: impl FnMut(u64) -> bool,
) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report::default();
    let mut current = Vec::new();
    loop {
        if report.tried.is_multiple_of(64) && until(report.tried) {
            return report;
        }
        match rng.random_range(0..16) {
            0 => current = (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
            1..=4 if !corpus.is_empty() => {
                current = corpus[rng.random_range(0..corpus.len())].clone()
            }
            _ => {}
        }
        mutate(&mut rng, t.dictionary, corpus, &mut current);
        current.truncate(MAX_INPUT);
        report.tried += 1;
        let (result, peak) = check_one(t, &current, probe);
        report.peak = report.peak.max(peak);
        match result {
            Ok(outcome) => *report.outcomes.entry(outcome).or_default() += 1,
            Err(why) if report.findings.len() < MAX_FINDINGS => {
                report.findings.push((current.clone(), why))
            }
            Err(_) => {}
        }
    }
}

/// Length-like values a mutation writes over four (or two) bytes.
fn edge_value(rng: &mut StdRng, remaining: usize) -> u32 {
    let edges = [
        0,
        1,
        3,
        4,
        5,
        7,
        8,
        9,
        16,
        255,
        256,
        0x7fff,
        0xffff,
        0x7fff_ffff,
        0x8000_0000,
    ];
    match rng.random_range(0..4) {
        0 => u32::MAX,
        1 => (remaining as u32)
            .wrapping_add(rng.random_range(0..3))
            .wrapping_sub(1),
        _ => edges[rng.random_range(0..edges.len())],
    }
}

/// One to four edits of `b`.
fn mutate(rng: &mut StdRng, dict: &[&[u8]], corpus: &[Vec<u8>], b: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..5) {
        let at = rng.random_range(0..=b.len());
        match rng.random_range(0..10) {
            0 if !dict.is_empty() => {
                let piece = dict[rng.random_range(0..dict.len())];
                b.splice(at..at, piece.iter().copied());
            }
            1 if at < b.len() => {
                let end = (at + rng.random_range(1..9)).min(b.len());
                b.drain(at..end);
            }
            2 if at < b.len() => b[at] = rng.random(),
            3 if at < b.len() => b[at] ^= 1 << rng.random_range(0..8),
            4 if at < b.len() => b[at] = b[at].wrapping_add(rng.random_range(0..3)).wrapping_sub(1),
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                let from = rng.random_range(0..=other.len());
                let to = rng.random_range(from..=other.len());
                b.splice(at..at, other[from..to].iter().copied());
            }
            6 => b.truncate(at),
            7 if at + 4 <= b.len() => {
                let v = edge_value(rng, b.len() - at);
                b[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            8 if at + 2 <= b.len() => {
                let v = edge_value(rng, b.len() - at) as u16;
                b[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            9 if at < b.len() => {
                let end = (at + rng.random_range(1..32)).min(b.len());
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
            _ => {
                let n = rng.random_range(1..9);
                b.splice(at..at, (0..n).map(|_| rng.random::<u8>()));
            }
        }
    }
}

/// The corpus directory of a target: `tests/fuzz_corpus/<name>/` in this repository.
pub fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(name)
}

/// Every file of `dir`, sorted by name (empty when the directory does not exist).
pub fn read_corpus(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            Some((
                e.file_name().into_string().ok()?,
                std::fs::read(e.path()).ok()?,
            ))
        })
        .collect();
    files.sort();
    files
}

/// Reads a 4-byte big-endian length at `at`, if there.
pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Splits `stream` into read sizes from `seed`, as a socket might deliver it.
pub(crate) fn chunks(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut x = u32::from(seed) | 1;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = match seed % 4 {
            0 => rest.len(),
            1 => 1,
            _ => 1 + (x as usize % 16),
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}
