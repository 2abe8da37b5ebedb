//! Smoke runs of the fuzz targets for the parsers of client input (src/protocol/fuzz,
//! src/auth/fuzz.rs): every file of `tests/fuzz_corpus/<target>/` is replayed (seeds and
//! past findings alike), then two seconds of mutations each; any panic, broken invariant or
//! allocation over the bound fails. The long run:
//! `cargo run --release --example fuzz -- <codec|startup|scram|guard> <seconds>`.
//! The SQL fast path against the parser path is tests/guard_fuzz.rs.

#[path = "../examples/fuzz/alloc.rs"]
mod alloc;

use std::time::{Duration, Instant};

use pgtenant::protocol::fuzz::{self, Target};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// Replays the corpus, then fuzzes for two seconds; returns the report.
fn smoke(t: &Target, must_reach: &[&str]) -> fuzz::Report {
    let files = fuzz::read_corpus(&fuzz::corpus_dir(t.name));
    assert!(
        files.len() >= 5,
        "{}: corpus has {} files",
        t.name,
        files.len()
    );
    for (name, input) in &files {
        let (result, _) = fuzz::check_one(t, input, &alloc::peak_of);
        assert!(result.is_ok(), "{}/{name}: {result:?}", t.name);
    }
    let corpus: Vec<Vec<u8>> = files.into_iter().map(|(_, b)| b).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    let report = fuzz::run(t, &corpus, 0x5eed, &alloc::peak_of, |_| {
        Instant::now() > deadline
    });
    assert!(
        report.findings.is_empty(),
        "{}: {:#?}",
        t.name,
        report.findings
    );
    assert!(report.tried > 1000, "{}: {report:?}", t.name);
    for outcome in must_reach {
        assert!(
            report.outcomes.contains_key(outcome),
            "{}: never reached {outcome}: {report:?}",
            t.name
        );
    }
    report
}

#[test]
fn codec_frames_like_the_reference_decoder() {
    let outcomes = ["ends_on_a_frame", "partial_first", "partial_after_frames"];
    smoke(
        &fuzz::codec::TARGET,
        &[&outcomes[..], &["bad_length", "too_large"]].concat(),
    );
}

#[test]
fn startup_packets_decode_like_the_reference_and_round_trip() {
    let outcomes = [
        "startup",
        "startup_options",
        "ssl_request",
        "cancel_request",
    ];
    let errors = [
        "bad_length",
        "malformed",
        "not_utf8",
        "unsupported_protocol",
    ];
    smoke(&fuzz::startup::TARGET, &[&outcomes[..], &errors].concat());
}

#[test]
fn scram_never_authenticates_a_mutated_exchange() {
    let failures = [
        "final_invalid_proof",
        "final_nonce_mismatch",
        "final_binding_mismatch",
    ];
    smoke(
        &pgtenant::auth::fuzz::TARGET,
        &[&["authenticated"][..], &failures].concat(),
    );
}

#[test]
fn scram_seeds_in_the_corpus_authenticate() {
    // The mutations start from exchanges that succeed, so they reach every step.
    let t = pgtenant::auth::fuzz::TARGET;
    let files = fuzz::read_corpus(&fuzz::corpus_dir(t.name));
    let seeds: Vec<_> = files
        .iter()
        .filter(|(n, _)| n.starts_with("seed-"))
        .collect();
    assert_eq!(seeds.len(), 8);
    for (name, input) in seeds {
        assert_eq!((t.check)(input), Ok("authenticated"), "{name}");
        let mut flipped = input.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert_ne!(
            (t.check)(&flipped),
            Ok("authenticated"),
            "{name} with a bit flipped"
        );
    }
}

#[test]
fn the_engine_reports_panics_broken_invariants_and_allocation() {
    // The checks are not vacuous: each kind of failure of a target becomes a finding.
    let target = |check: fn(&[u8]) -> Result<&'static str, String>| Target {
        name: "selftest",
        check,
        alloc_bound: |input| input.len() + 1024,
        seeds: Vec::new,
        dictionary: &[b"x"],
    };
    let panics = target(|b| Ok(["a", "b"][b.len()]));
    let breaks = target(|b| {
        if b.len() > 3 {
            Err("long".into())
        } else {
            Ok("short")
        }
    });
    let allocates = target(|b| {
        Ok(if vec![0u8; 4096 * b.len()].len() > 9 {
            "big"
        } else {
            "small"
        })
    });
    let corpus = vec![b"ab".to_vec()];
    for t in [panics, breaks, allocates] {
        let r = fuzz::run(&t, &corpus, 1, &alloc::peak_of, |n| n > 2000);
        assert!(!r.findings.is_empty(), "{r:?}");
    }
    let (r, _) = fuzz::check_one(&target(|_| panic!("boom")), b"", &fuzz::no_probe);
    assert_eq!(r, Err("panic: boom".to_string()));
}
