//! Long runs of the fuzz targets for every parser of client input:
//! `cargo run --release --example fuzz -- <target> <seconds>[cpu] [seed]`, target one of `codec`,
//! `startup`, `scram` (src/protocol/fuzz, src/auth/fuzz.rs) or `guard` (the SQL fast path
//! against the parser path, src/policy/fuzz.rs). Starts from the corpus in
//! `tests/fuzz_corpus/<target>/`, prints what it tried, the outcomes reached, the CPU seconds
//! spent, and every finding (saved as `found-<n>` in the corpus so it is replayed by
//! `tests/fuzz.rs` from then on); exits 1 on any.
//! `cargo run --release --example fuzz -- seed` writes the built-in seeds into the corpus.

mod alloc;

use std::time::{Duration, Instant};

use pgtenant::protocol::fuzz::{self, Target};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fn targets() -> [Target; 3] {
    [
        fuzz::codec::TARGET,
        fuzz::startup::TARGET,
        pgtenant::auth::fuzz::TARGET,
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map(String::as_str).unwrap_or("");
    // `<n>` is wall-clock seconds; `<n>cpu[,<wall>]` is CPU seconds of this process (at
    // most <wall> seconds of wall clock, on a machine shared with other work).
    let limit = args.get(1).map(String::as_str).unwrap_or("60");
    let (limit, wall) = limit.split_once(',').unwrap_or((limit, ""));
    let cpu_limit = limit.ends_with("cpu");
    let secs: u64 = limit.trim_end_matches("cpu").parse().unwrap_or(60);
    let wall: u64 = wall
        .parse()
        .unwrap_or(if cpu_limit { 100 * secs } else { secs });
    let seed: u64 = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(rand::random);
    let found = match name {
        "seed" => write_seeds(),
        "guard" => guard(Limit::new(secs, cpu_limit, wall), seed),
        _ => match targets().into_iter().find(|t| t.name == name) {
            Some(t) => bytes_target(&t, Limit::new(secs, cpu_limit, wall), seed),
            None => {
                eprintln!(
                    "usage: fuzz <codec|startup|scram|guard> <seconds>[cpu] [seed] | fuzz seed"
                );
                std::process::exit(2);
            }
        },
    };
    if found {
        std::process::exit(1);
    }
}

/// CPU seconds this process has used (user + system), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime, in clock ticks of 1/100 s) are the 12th and 13th
    // after the command name.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// When a run stops: after wall-clock seconds, or after CPU seconds (read every 4096 inputs)
/// or the wall-clock cap, whichever comes first.
struct Limit {
    deadline: Instant,
    cpu: Option<f64>,
}

impl Limit {
    fn new(secs: u64, cpu: bool, wall: u64) -> Limit {
        Limit {
            deadline: Instant::now() + Duration::from_secs(wall),
            cpu: cpu.then(|| cpu_seconds() + secs as f64),
        }
    }

    fn reached(&self, tried: u64) -> bool {
        match self.cpu {
            Some(until) if tried.is_multiple_of(4096) => {
                cpu_seconds() >= until || Instant::now() > self.deadline
            }
            Some(_) => false,
            None => Instant::now() > self.deadline,
        }
    }
}

fn bytes_target(t: &Target, limit: Limit, seed: u64) -> bool {
    let dir = fuzz::corpus_dir(t.name);
    let corpus: Vec<Vec<u8>> = fuzz::read_corpus(&dir)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    std::panic::set_hook(Box::new(|_| {}));
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let report = fuzz::run(t, &corpus, seed, &alloc::peak_of, |n| limit.reached(n));
    let _ = std::panic::take_hook();
    println!(
        "{} seed {seed}: {} inputs ({} corpus files) in {:.0?}, {:.1} CPU s, peak alloc {} B, {} findings",
        t.name,
        report.tried,
        corpus.len(),
        start.elapsed(),
        cpu_seconds() - cpu,
        report.peak,
        report.findings.len()
    );
    println!("outcomes: {:?}", report.outcomes);
    for (i, (input, why)) in report.findings.iter().enumerate() {
        let path = dir.join(format!("found-{seed}-{i}"));
        let _ = std::fs::write(&path, input);
        println!(
            "FINDING {why}\n  input {input:?}\n  saved {}",
            path.display()
        );
    }
    !report.findings.is_empty()
}

fn guard(limit: Limit, seed: u64) -> bool {
    use pgtenant::policy::fuzz as g;
    let corpus = g::read_corpus(include_str!("../../tests/guard/fuzz_corpus.sql"));
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let report = g::run(&corpus, seed, |n| limit.reached(n));
    println!(
        "guard seed {seed}: {} texts in {:.0?}, {:.1} CPU s, {} cleared by the fast path, {} findings",
        report.tried,
        start.elapsed(),
        cpu_seconds() - cpu,
        report.cleared,
        report.findings.len()
    );
    for (text, why) in &report.findings {
        println!("FINDING {text:?}: parser refuses: {why}");
    }
    !report.findings.is_empty()
}

fn write_seeds() -> bool {
    for t in targets() {
        let dir = fuzz::corpus_dir(t.name);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (i, s) in (t.seeds)().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).expect("corpus file");
        }
        println!("{}: seeds written to {}", t.name, dir.display());
    }
    false
}
