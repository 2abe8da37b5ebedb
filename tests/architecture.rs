//! The module map holds: imports between the top-level modules of `src/` form no cycle and
//! run down the data path (client → server → frontend → session → pool → backend, then the
//! layers every stage stands on), and the code stays in small files and short functions.
//! Reads the source as text (`crate::` paths); needs no PostgreSQL. ARCHITECTURE.md explains
//! the layers; a new top-level module must be placed in [`LAYERS`] before this test passes.

mod architecture {
    pub mod graph;
    pub mod sizes;
    pub mod source;
}

use architecture::graph::{Graph, Layers};
use architecture::source::SourceFile;
use architecture::{sizes, source};

/// The layers, top (nearest the client) to bottom. A module may import modules of its own
/// layer (as long as no cycle forms) and of any layer below it.
const LAYERS: Layers = &[
    // The process: start, accept, drain, signals; the demo starts a whole proxy.
    ("process", &["server", "demo"]),
    // One client up to an authenticated tenant; hands admin users to the console.
    ("frontend", &["frontend"]),
    ("admin", &["admin"]),
    // One authenticated client: the transaction-pooling relay.
    ("session", &["session"]),
    // The state every stage shares: config in force, tenants, pools, slots, reload.
    ("shared", &["shared"]),
    // Resources the shared state holds, and the start-up checks that use a backend.
    ("resources", &["pool", "doctor"]),
    ("tenant", &["tenant"]),
    ("backend", &["backend"]),
    // Bookkeeping every stage reports into; cancel routing, which a client's registry entry
    // holds (a pointer to its backend's cancel gate).
    ("operations", &["http", "metrics", "registry", "cancel"]),
    ("transport", &["tls", "stream"]),
    // Pure parts: typed configuration, codecs, what a tenant may send (the guard: pure
    // judgment on bytes, which config validates against and backend checks reports with),
    // crypto, the throwaway test cluster.
    (
        "foundation",
        &[
            "config",
            "policy",
            "verified",
            "auth",
            "protocol",
            "signal",
            "pgcluster",
        ],
    ),
];

/// Imports that run up the layers on purpose: (from, to, why). Keep it short; each entry
/// must still be needed, or the test fails so the list stays honest.
const ALLOWED_UPWARD: &[(&str, &str, &str)] = &[];

/// Non-test files allowed over [`sizes::MAX_FILE_LINES`], with why.
const LARGE_FILES: &[(&str, &str)] = &[("src/policy/sql.rs", "being split by the guard move")];

#[test]
fn top_level_modules_import_each_other_in_no_cycle() {
    let graph = Graph::read(&source::files());
    let cycles = graph.cycles();
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules of src/:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn imports_run_down_the_data_path() {
    let graph = Graph::read(&source::files());
    let unplaced = graph.unplaced(LAYERS);
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS in tests/architecture.rs (place each in a layer): {unplaced:?}"
    );
    let upward = graph.upward(LAYERS);
    let unexpected: Vec<&String> = upward
        .iter()
        .filter(|(from, to, _)| !ALLOWED_UPWARD.iter().any(|(f, t, _)| f == from && t == to))
        .map(|(_, _, line)| line)
        .collect();
    assert!(
        unexpected.is_empty(),
        "imports against the data path (a lower layer importing a higher one):\n{}",
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (from, to, why) in ALLOWED_UPWARD {
        assert!(
            upward.iter().any(|(f, t, _)| f == from && t == to),
            "ALLOWED_UPWARD lists {from} -> {to} ({why}), which no longer happens: remove it"
        );
    }
}

#[test]
fn files_stay_small_and_functions_short() {
    let files = source::files();
    let report = sizes::measure(&files);
    println!(
        "non-test functions: {}, median {} lines, p90 {} lines, longest {} ({})",
        report.functions, report.median, report.p90, report.longest.1, report.longest.0
    );
    let big: Vec<String> = report
        .large_files
        .iter()
        .filter(|(path, _)| !LARGE_FILES.iter().any(|(p, _)| p == path))
        .map(|(path, lines)| format!("{path}: {lines} lines"))
        .collect();
    assert!(
        big.is_empty(),
        "non-test files over {} lines: {big:?}",
        sizes::MAX_FILE_LINES
    );
    assert!(
        report.p90 <= sizes::MAX_FUNCTION_P90,
        "function length p90 is {} lines (budget {})",
        report.p90,
        sizes::MAX_FUNCTION_P90
    );
}

/// The check itself: a made-up tree with a cycle through a grouped, multi-line `use`, an
/// upward import and an unplaced module must be caught.
#[test]
fn the_check_sees_cycles_upward_imports_and_unplaced_modules() {
    let file = |path: &str, module: &str, code: &str| SourceFile {
        path: path.into(),
        module: Some(module.into()),
        code: code.lines().map(String::from).collect(),
        lines: code.lines().count(),
    };
    let files = [
        file(
            "src/session/mod.rs",
            "session",
            "use crate::{\n    pool::Pool,\n};",
        ),
        file("src/pool/mod.rs", "pool", "fn f() { crate::session::g() }"),
        file("src/backend/mod.rs", "backend", "use crate::newcomer::X;"),
        file("src/newcomer.rs", "newcomer", "use crate::config::Config;"),
    ];
    let graph = Graph::read(&files);
    let cycles = graph.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(cycles[0].starts_with("cycle: pool ↔ session"), "{cycles:?}");
    let upward: Vec<(String, String)> = graph
        .upward(LAYERS)
        .into_iter()
        .map(|(from, to, _)| (from, to))
        .collect();
    assert_eq!(upward, [("pool".to_string(), "session".to_string())]);
    assert_eq!(graph.unplaced(LAYERS), ["newcomer"]);
}
