//! What a statement does to the session and the transaction, as the relay needs to know:
//! a plain BEGIN (answered by the proxy), statements that end the transaction or RESET ALL
//! (what follows them needs the context again), statements that cannot run in a
//! transaction block, SQL-level prepared statements, and anything that may leave session
//! state.

use super::lexer::Lexer;
use super::{Token, TokenKind, is_kw, is_kw_in, is_op};
use crate::policy::mentions::{Mentions, Word};

/// Top-level statements of `sql` (split on `;`, empty ones dropped).
fn statements<'t>(toks: &'t [Token<'t>]) -> impl Iterator<Item = &'t [Token<'t>]> {
    toks.split(|t| is_op(Some(t), b';'))
        .filter(|s| !s.is_empty())
}

/// True when `sql` is a BEGIN without options (`BEGIN`, `BEGIN WORK`, `BEGIN TRANSACTION`,
/// `START TRANSACTION`, any case, comments and trailing semicolons allowed): one that cannot
/// fail outside a transaction block, so the proxy may answer it before sending it on.
pub fn is_plain_begin(sql: &[u8]) -> bool {
    let mut words = [None; 2];
    let mut n = 0;
    for t in Lexer::new(sql) {
        if is_op(Some(&t), b';') {
            continue;
        }
        if t.kind != TokenKind::Ident || n == words.len() {
            return false;
        }
        words[n] = Some(t);
        n += 1;
    }
    let (first, second) = (words[0].as_ref(), words[1].as_ref());
    if is_kw(first, "begin") {
        second.is_none() || is_kw_in(second, &["work", "transaction"])
    } else {
        is_kw(first, "start") && is_kw(second, "transaction")
    }
}

/// True when the statement `s` only sets up the transaction it opens or is in (`BEGIN` or
/// `START TRANSACTION` with any options, `SET TRANSACTION ...`, `SET SESSION CHARACTERISTICS
/// AS TRANSACTION ...`): it takes no snapshot and reads no rows, and PostgreSQL refuses an
/// isolation level once any statement of the transaction took a snapshot, so the tenant
/// context (a SELECT) must come after it, not before.
fn is_setup(s: &[Token]) -> bool {
    let kw = |k: usize, w: &str| is_kw(s.get(k), w);
    kw(0, "begin")
        || (kw(0, "start") && kw(1, "transaction"))
        || (kw(0, "set") && kw(1, "transaction"))
        || (kw(0, "set") && kw(1, "session") && kw(2, "characteristics"))
}

/// True when `toks` hold at least one statement and every statement only sets up the
/// transaction (see [`is_setup`]): the context injection waits for the next request.
pub(super) fn transaction_setup(toks: &[Token]) -> bool {
    let mut any = false;
    for s in statements(toks) {
        if !is_setup(s) {
            return false;
        }
        any = true;
    }
    any
}

/// True when the first statement only sets up the transaction and a statement that does
/// not follows it: the cheap pre-check before the session asks PostgreSQL's parser where to
/// split the text (see `policy::setup`).
pub(super) fn setup_prefix(toks: &[Token]) -> bool {
    let mut stmts = statements(toks);
    stmts.next().is_some_and(is_setup) && stmts.any(|s| !is_setup(s))
}

/// True when `sql` is a single statement that PostgreSQL refuses to run inside a transaction block or pipeline.
pub fn is_no_transaction_block(sql: &[u8]) -> bool {
    no_transaction_block(&Lexer::new(sql).collect::<Vec<_>>())
}

pub(super) fn no_transaction_block(toks: &[Token]) -> bool {
    let mut stmts = statements(toks);
    let (Some(s), None) = (stmts.next(), stmts.next()) else {
        return false;
    };
    let kw = |k: usize, w: &str| is_kw(s.get(k), w);
    let any = |w: &str| s.iter().any(|t| is_kw(Some(t), w));
    let first = |w: &str| kw(0, w);
    // Index just past an optional parenthesized option list starting at `k`.
    let close = |k: usize| {
        (k..s.len())
            .find(|&j| is_op(s.get(j), b')'))
            .map_or(s.len(), |j| j + 1)
    };
    let skip_opts = |k: usize| if is_op(s.get(k), b'(') { close(k) } else { k };
    if first("vacuum") {
        true
    } else if first("create") || first("drop") {
        let obj = is_kw_in(s.get(1), &["database", "tablespace", "subscription"]);
        let idx = 1 + usize::from(first("create") && kw(1, "unique"));
        obj || (kw(idx, "index") && kw(idx + 1, "concurrently"))
    } else if first("alter") {
        let set_ts = (1..s.len()).any(|k| kw(k, "set") && kw(k + 1, "tablespace"));
        kw(1, "system")
            || kw(1, "subscription")
            || (kw(1, "database") && set_ts)
            || (kw(1, "table") && any("detach") && any("concurrently"))
    } else if first("reindex") {
        let k = skip_opts(1);
        any("concurrently") || is_kw_in(s.get(k), &["database", "system", "schema"])
    } else if first("cluster") {
        let k = skip_opts(1);
        s.len() <= k + usize::from(kw(k, "verbose"))
    } else if first("commit") || first("rollback") {
        kw(1, "prepared")
    } else {
        first("discard") && kw(1, "all")
    }
}

/// True when some statement in `sql` is SQL-level PREPARE, EXECUTE or DEALLOCATE (other
/// than DEALLOCATE ALL): named statements that cannot follow a client across backends.
pub fn uses_sql_prepared_statements(sql: &[u8]) -> bool {
    sql_prepared(&Lexer::new(sql).collect::<Vec<_>>())
}

pub(super) fn sql_prepared(toks: &[Token]) -> bool {
    statements(toks).any(|s| {
        let kw = |k: usize, w: &str| is_kw(s.get(k), w);
        kw(0, "prepare") && !kw(1, "transaction")
            || kw(0, "execute")
            || kw(0, "deallocate") && !(kw(1, "all") || kw(1, "prepare") && kw(2, "all"))
    })
}

/// True when `sql` may leave session-level state behind on the backend connection.
pub fn may_change_session_state(sql: &[u8]) -> bool {
    session_state(Mentions::of(sql), &Lexer::new(sql).collect::<Vec<_>>())
}

pub(super) fn session_state(m: Mentions, toks: &[Token]) -> bool {
    // Substring search also covers function bodies and DO blocks (conservative).
    let mentions = [
        Word::SetConfig,
        Word::AdvisoryLock,
        Word::TryAdvisoryLock,
        Word::AdvisoryUnlock,
        Word::DblinkConnect,
    ];
    if m.any(&mentions) {
        return true;
    }
    statements(toks).any(|s| {
        let kw = |k: usize, w: &str| is_kw(s.get(k), w);
        let temp = |k: usize| kw(k, "temp") || kw(k, "temporary");
        let session_kw = [
            "reset",
            "discard",
            "listen",
            "unlisten",
            "prepare",
            "deallocate",
        ];
        if kw(0, "set") {
            !is_kw_in(s.get(1), &["local", "transaction", "constraints"])
        } else if is_kw_in(s.first(), &session_kw)
            || is_kw_in(s.first(), &["declare", "load", "do"])
        {
            // DO blocks can run SET, create temp tables, ...: assume they do.
            true
        } else if kw(0, "update") {
            is_kw_in(s.get(1), &["pg_settings", "pg_catalog", "only"]) && m.has(Word::PgSettings)
        } else if kw(0, "create") {
            // A temp table, or any object made in pg_temp (a function, a view, a type).
            (1..s.len()).any(temp) || m.has(Word::PgTemp)
        } else if kw(0, "select") || kw(0, "with") || is_op(s.first(), b'(') {
            (0..s.len()).any(|k| {
                let scope = usize::from(is_kw_in(s.get(k + 1), &["local", "global"]));
                kw(k, "into") && temp(k + 1 + scope)
            })
        } else {
            false
        }
    })
}

/// What a statement of `sql` visibly keeps in the session after its transaction, if
/// anything: a temp table, LISTEN, an SQL-level prepared statement, a WITH HOLD cursor or a
/// session advisory lock (the label names it in the client's error when it cannot be kept).
/// Checked before the statement runs, for `pin_session_state`; what PostgreSQL really keeps
/// is asked after the transaction (see `session::pin`), so this only needs to see the
/// usual spellings.
pub(super) fn kept_state(m: Mentions, toks: &[Token]) -> Option<&'static str> {
    if m.any(&[Word::AdvisoryLock, Word::TryAdvisoryLock]) {
        return Some("a session advisory lock");
    }
    statements(toks).find_map(|s| {
        let kw = |k: usize, w: &str| is_kw(s.get(k), w);
        let temp = |k: usize| kw(k, "temp") || kw(k, "temporary");
        if kw(0, "listen") {
            Some("LISTEN")
        } else if kw(0, "prepare") && !kw(1, "transaction") {
            Some("PREPARE")
        } else if kw(0, "declare") && (1..s.len()).any(|k| kw(k, "with") && kw(k + 1, "hold")) {
            Some("a WITH HOLD cursor")
        } else if kw(0, "create") && (1..s.len().min(4)).any(temp) {
            // ON COMMIT DROP: gone with the transaction.
            let dropped =
                (0..s.len()).any(|k| kw(k, "on") && kw(k + 1, "commit") && kw(k + 2, "drop"));
            (!dropped).then_some("a temporary object")
        } else if (kw(0, "select") || kw(0, "with"))
            && (0..s.len()).any(|k| {
                let scope = usize::from(is_kw_in(s.get(k + 1), &["local", "global"]));
                kw(k, "into") && temp(k + 1 + scope)
            })
        {
            Some("a temporary object")
        } else {
            None
        }
    })
}

/// True when `sql` may name a LISTEN/NOTIFY channel (`session::channels` then rewrites it).
pub(super) fn names_channel(m: Mentions) -> bool {
    m.any(&[Word::Listen, Word::Notify])
}

/// True when the statement `s` leaves what follows it without the tenant context: it ends
/// the transaction (COMMIT, END, ABORT, ROLLBACK but not ROLLBACK TO a savepoint, PREPARE
/// TRANSACTION; AND CHAIN variants included), or it is RESET ALL or DISCARD ALL, which
/// clear the transaction-local context too.
fn clears(s: &[Token]) -> bool {
    let kw = |k: usize, w: &str| is_kw(s.get(k), w);
    (is_kw_in(s.first(), &["commit", "end", "abort"]) && !kw(1, "prepared"))
        || (kw(0, "rollback") && !kw(1, "prepared") && !kw(1, "to") && !kw(2, "to"))
        || (kw(0, "prepare") && kw(1, "transaction"))
        || (kw(0, "reset") && kw(1, "all"))
        || (kw(0, "discard") && kw(1, "all"))
}

/// True when a statement of `toks` drops, or may drop, what the proxy keeps in a backend's
/// session: settings (RESET ALL, DISCARD ALL, the carried verified context with them),
/// prepared statements (DISCARD ALL, DEALLOCATE [PREPARE] ALL), or the transaction and
/// with it the context (a DO block or procedure may COMMIT or ROLLBACK inside). Requests
/// pipelined behind it were sent before its CommandComplete arrives, so the proxy must
/// assume it at send time.
pub(super) fn resets_session(toks: &[Token]) -> bool {
    statements(toks).any(|s| {
        let kw = |k: usize, w: &str| is_kw(s.get(k), w);
        ((kw(0, "reset") || kw(0, "discard")) && kw(1, "all"))
            || (kw(0, "deallocate") && (kw(1, "all") || (kw(1, "prepare") && kw(2, "all"))))
            || kw(0, "do")
            || kw(0, "call")
    })
}

/// Whether some statement of `sql` clears the context, and whether another statement
/// follows one that does (it would run without the tenant context, and the proxy cannot
/// inject between statements of one Query).
pub(super) fn context_clearing(toks: &[Token]) -> (bool, bool) {
    let mut cleared = false;
    for s in statements(toks) {
        if cleared {
            return (true, true);
        }
        cleared = clears(s);
    }
    (cleared, false)
}
