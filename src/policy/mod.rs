//! The one home of what pgtenant refuses and why. `protocol/` decodes frames; this module
//! decides. Every SQL text goes through [`analyze`]: the lexical guard (`sql`, which also
//! answers what the session needs to know: transaction setup, session state, ...), then a
//! cheap pre-check (`fast`) that clears plain DML, and PostgreSQL's own parser (`parsed`)
//! for everything it cannot clear. The parser's tables live in `knowledge`. Sessions ask
//! through `cache`, which remembers verdicts by text, or by `shape` for texts the fast path
//! clears (number literals aside, the same text).

mod cache;
pub mod fast;
pub mod frames;
pub mod fuzz;
pub mod knowledge;
mod mentions;
pub mod parsed;
pub mod setup;
mod shape;
pub mod sql;

pub use cache::AnalysisCache;
pub use sql::{Analysis, GuardViolation};

use crate::protocol::sqlstate;
use parsed::Parsed;

/// What the analysis of a Parse's text says that a Bind naming the statement needs again:
/// kept with the statement, so a Bind is not read a second time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// It cannot run inside a transaction block.
    pub no_txn_block: bool,
    /// What running it may leave in the session.
    pub leftover: sql::Leftover,
    /// It only sets the transaction up (BEGIN, SET TRANSACTION): it goes before the context.
    pub transaction_setup: bool,
    /// It ends the context (COMMIT, ROLLBACK, RESET ALL, DISCARD ALL).
    pub clears_context: bool,
    /// It drops settings or prepared statements the proxy keeps in the session.
    pub resets_session: bool,
}

impl Reading {
    /// A plain BEGIN (a deferred one: the sweep, as for any statement not read).
    pub const BEGIN: Reading = Reading {
        no_txn_block: false,
        leftover: sql::Leftover::Sweep,
        transaction_setup: true,
        clears_context: false,
        resets_session: false,
    };

    /// The reading of an analyzed text.
    pub fn of(a: &Analysis) -> Reading {
        Reading {
            no_txn_block: a.no_transaction_block,
            leftover: a.leftover,
            transaction_setup: a.transaction_setup,
            clears_context: a.clears_context,
            resets_session: a.resets_session,
        }
    }
}

/// The guard's verdict on one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let through.
    Allow,
    /// Refused, with the reason and SQLSTATE.
    Refuse(GuardViolation),
}

/// The verdict on `sql` against the `protected` settings: the lexical guard first, then the
/// fast path or the parser.
pub fn check(sql: &[u8], protected: &[String]) -> Verdict {
    match sql::find_protected_change(sql, protected) {
        Some(v) => Verdict::Refuse(v),
        None => match parser_verdict(sql, protected) {
            Some(v) => Verdict::Refuse(v),
            None => Verdict::Allow,
        },
    }
}

/// Everything the session needs to know about one Query or Parse text.
pub fn analyze(sql: &[u8], protected: &[String]) -> Analysis {
    analyze_mentioning(sql, mentions::Mentions::of(sql), protected)
}

/// [`analyze`] for a text whose mentions are known.
fn analyze_mentioning(sql: &[u8], m: mentions::Mentions, protected: &[String]) -> Analysis {
    let mut a = sql::analyze_mentioning(sql, m, protected);
    if a.protected_change.is_none() && !protected.is_empty() {
        a.protected_change = parser_verdict_mentioning(sql, m, protected);
    }
    a
}

/// Longest text the parser path reads. PostgreSQL's parse tree of a dense text (a long
/// list of constants) takes thousands of times the text's size in the proxy's memory and
/// seconds of its one worker thread; longer texts the fast path does not clear are refused.
pub const MAX_PARSED_TEXT: usize = 128 * 1024;

/// The parser path's refusal, unless the fast path clears the text. A text PostgreSQL's
/// grammar cannot read is refused as the syntax error PostgreSQL would report: it could
/// not run anyway, and letting it through would trust that the server's grammar is the
/// parser's.
fn parser_verdict(sql: &[u8], protected: &[String]) -> Option<GuardViolation> {
    parser_verdict_mentioning(sql, mentions::Mentions::of(sql), protected)
}

/// [`parser_verdict`] for a text whose mentions are known.
fn parser_verdict_mentioning(
    sql: &[u8],
    m: mentions::Mentions,
    protected: &[String],
) -> Option<GuardViolation> {
    if fast::clears_mentioning(sql, m) {
        return None;
    }
    if sql.len() > MAX_PARSED_TEXT {
        return Some(GuardViolation {
            setting: format!(
                "SQL text of {} bytes is longer than pgtenant's guard reads ({MAX_PARSED_TEXT} bytes) when it holds more than one statement or names a function or relation the guard checks; send the statements one at a time",
                sql.len()
            ),
            code: sqlstate::PROGRAM_LIMIT_EXCEEDED,
            widenable: Vec::new(),
            position: None,
        });
    }
    match parsed::check(sql, protected) {
        Parsed::Allowed => None,
        Parsed::Refused(v) => Some(v),
        Parsed::SyntaxError(message, position) => Some(GuardViolation {
            setting: message,
            code: sqlstate::SYNTAX_ERROR,
            widenable: Vec::new(),
            position,
        }),
    }
}

/// What is wrong when the server reports `name` = `value` (a ParameterStatus) and the value
/// makes PostgreSQL read SQL text differently from the guard; None when it is safe.
pub fn unreadable_report(name: &str, value: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    sql::unreadable(lower.as_bytes(), value.as_bytes()).map(|_| format!("{lower}={value}"))
}

/// A small deterministic generator (xorshift64) for the policy tests' random texts.
#[cfg(test)]
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
