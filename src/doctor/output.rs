//! The doctor's report as text for people and as JSON for CI.

use std::fmt::Write;

use super::{Report, Severity};

/// Output format of `pgtenant doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// One block per finding: severity, database, check and object on the first line, then
    /// what is wrong and the fix SQL, indented.
    #[default]
    Table,
    /// `{"findings": [...], "failures": [...]}`, one object per finding.
    Json,
}

/// `report` in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Json => {
            serde_json::to_string_pretty(report).expect("a report always serializes") + "\n"
        }
        Format::Table => table(report),
    }
}

fn table(report: &Report) -> String {
    let mut out = String::new();
    let critical = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Critical)
        .count();
    let _ = writeln!(
        out,
        "pgtenant doctor: {} finding(s): {critical} critical, {} warning(s); {} check(s) could not run",
        report.findings.len(),
        report.findings.len() - critical,
        report.failures.len()
    );
    for f in &report.findings {
        let _ = writeln!(
            out,
            "\n{:<8}  {}  {}  {}",
            f.severity.label(),
            f.database,
            f.check,
            f.object
        );
        let _ = writeln!(out, "    {}", f.message);
        for (i, line) in f.fix.lines().enumerate() {
            let lead = if i == 0 { "fix:" } else { "    " };
            let _ = writeln!(out, "    {lead} {line}");
        }
    }
    for f in &report.failures {
        let _ = writeln!(out, "\nNOT RUN   {}  {}  {}", f.database, f.check, f.error);
    }
    out
}
