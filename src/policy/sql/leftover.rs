//! The release rule: what a text may leave in the session that none of its statements
//! names, and so the cleanup its backend needs before another client may use it. Read from
//! the tokens (the lexer runs on every text, with the guard on or off); conservative: what
//! the rule cannot tell costs a cleanup, never a leak.
//!
//! - [`Leftover::Unseen`] (DISCARD ALL at release): code the proxy did not read ran or was
//!   made in the session: any mention of the `pg_temp` schema (objects made or called
//!   there, in any spelling, `pg_temp_3` included), a `U&` escape (which could spell it),
//!   a DO block, and a call of any function outside [`SAFE_CALLS`] (a function already in
//!   the database, whose body the proxy never read, may SET, PREPARE, DEALLOCATE ALL,
//!   LISTEN, make temp tables ...).
//! - [`Leftover::Sweep`] (DISCARD SEQUENCES and DISCARD TEMP, pipelined ahead of the next
//!   user): sequence functions (`nextval`, `setval`, `currval`, `lastval`), and every
//!   statement but a query or transaction control: any INSERT, COPY or MERGE may call
//!   `nextval` through a column DEFAULT, writes fire triggers, DDL may make temp objects.
//! - [`Leftover::Nothing`] (no cleanup at all): queries (`SELECT`, `VALUES`, `TABLE`,
//!   `SHOW`, a `WITH` without a write, no `INTO`) and transaction control, calling at
//!   most the functions of [`SAFE_CALLS`]. pgbench's select-only transaction is one.
//!
//! What the rule does not see: code that runs without being named (a view, policy,
//! operator, column default or trigger that calls a function). Writes are swept anyway;
//! such code in a query is the database's own (the guard read it when it was made through
//! pgtenant). The proxy's own prepared statements are re-created if such code drops them
//! (see `session::recover`).

use super::{Token, TokenKind, is_kw, is_kw_in, is_op};
use crate::policy::mentions::{Mentions, Word};

/// What a transaction may have left behind, in increasing order of the cleanup it needs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leftover {
    /// Nothing a later client could see: no cleanup.
    #[default]
    Nothing,
    /// Sequence values or temp objects: the sweep.
    Sweep,
    /// Session state the proxy cannot see or name: DISCARD ALL.
    Unseen,
}

/// Names followed by `(` that are not calls of a function that could be anyone's: SQL
/// keywords, type names with a modifier, and PostgreSQL constructs the grammar resolves
/// itself (COALESCE, GREATEST, ... are not functions; EXTRACT, SUBSTRING(x FROM y), OVERLAY,
/// TRIM and POSITION become calls of `pg_catalog` functions by name). Plain aggregates and
/// a few common built-ins are listed too: an unqualified call resolves to `pg_catalog`
/// first, and a function of the same name and arguments elsewhere cannot mask it.
pub const SAFE_CALLS: [&str; 56] = [
    // Keywords that take a parenthesis.
    "select",
    "in",
    "exists",
    "any",
    "all",
    "some",
    "values",
    "row",
    "array",
    "over",
    "filter",
    "and",
    "or",
    "not",
    "when",
    "then",
    "else",
    "where",
    "from",
    "join",
    "on",
    "using",
    "by",
    "having",
    "between",
    "like",
    "ilike",
    "is",
    "as",
    "with",
    "group",
    "lateral",
    "cast",
    "except",
    "union",
    "intersect",
    "limit",
    "offset",
    "returning",
    "set",
    "case",
    // Constructs of the grammar.
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "extract",
    "position",
    "overlay",
    "trim",
    // Types with a modifier.
    "varchar",
    "char",
    "character",
    "numeric",
    "decimal",
    "timestamp",
    "interval",
];

/// Sequence functions: they leave `currval` / `lastval` in the session.
const SEQUENCE_CALLS: [&str; 4] = ["nextval", "setval", "currval", "lastval"];

/// Words before a name followed by `(` that make it something other than a call: a
/// relation's column list (`INSERT INTO t (a, b)`, `COPY t (a)`, `REFERENCES t (id)`), an
/// alias's column list, a function being defined or dropped. (`ON t (col)` only in
/// `CREATE INDEX`: elsewhere `ON f(...)` is a join condition calling `f`, see [`call`].)
const NOT_A_CALL_AFTER: [&str; 9] = [
    "into",
    "table",
    "copy",
    "references",
    "as",
    "function",
    "procedure",
    "aggregate",
    "index",
];

/// First words of statements that leave nothing by themselves.
const QUIET_FIRST: [&str; 12] = [
    "select",
    "values",
    "table",
    "show",
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
];

/// What a text (lexed as `toks`, with the words `m` it mentions) may leave in the session.
pub(super) fn leftover(m: Mentions, toks: &[Token]) -> Leftover {
    if m.any(&[Word::PgTemp, Word::UnicodeEscape]) {
        return Leftover::Unseen;
    }
    toks.split(|t| is_op(Some(t), b';'))
        .filter(|s| !s.is_empty())
        .map(statement)
        .max()
        .unwrap_or(Leftover::Nothing)
}

fn statement(s: &[Token]) -> Leftover {
    if is_kw(s.first(), "do") {
        return Leftover::Unseen;
    }
    let mut worst = if quiet(s) {
        Leftover::Nothing
    } else {
        Leftover::Sweep
    };
    let sources = has_function_source(s);
    for k in 0..s.len() {
        if is_op(s.get(k + 1), b'(') || attribute_call(s, k, sources) {
            worst = worst.max(call(s, k));
        }
    }
    worst
}

/// True when the statement `s` is a query or transaction control without a write or INTO.
fn quiet(s: &[Token]) -> bool {
    let writes = ["insert", "update", "delete", "merge", "into"];
    let first_ok = is_kw_in(s.first(), &QUIET_FIRST) || is_kw(s.first(), "with");
    first_ok && !s.iter().any(|t| is_kw_in(Some(t), &writes))
}

/// What the name at `k` (followed by `(`) may leave, if it is a call.
fn call(s: &[Token], k: usize) -> Leftover {
    let t = &s[k];
    if t.kind == TokenKind::QuotedIdent {
        return Leftover::Unseen;
    }
    if t.kind != TokenKind::Ident {
        return Leftover::Nothing;
    }
    let qualified = k >= 2 && is_op(s.get(k - 1), b'.');
    let before = if qualified {
        k.checked_sub(3)
    } else {
        k.checked_sub(1)
    };
    if before.is_some_and(|b| {
        is_kw_in(s.get(b), &NOT_A_CALL_AFTER) || (is_kw(s.get(b), "on") && creates_index(s))
    }) {
        return Leftover::Nothing;
    }
    if is_kw_in(Some(t), &SEQUENCE_CALLS) {
        Leftover::Sweep
    } else if qualified && is_kw(s.get(k - 2), "pg_catalog") {
        // PostgreSQL's own functions: what they leave is named in the text (set_config and
        // advisory locks mark the session dirty) or swept.
        Leftover::Sweep
    } else if !qualified && (is_kw_in(Some(t), &SAFE_CALLS) || is_kw_in(Some(t), &BUILTINS)) {
        Leftover::Nothing
    } else {
        Leftover::Unseen
    }
}

/// True when the name at `k` may be a call in PostgreSQL's attribute notation, `x.f` for
/// `f(x)`: after a parenthesized expression `(x).f`, a subscript `a[1].f` or a parameter
/// `$1.f`, and, in a statement with a function in its FROM list (`FROM upper($1) u`, whose
/// alias stands for the function's value), after any name (`u.f`). A table alias's `t.f`
/// calls `f(t)` only for a function of the table's row type (see the README).
fn attribute_call(s: &[Token], k: usize, function_sources: bool) -> bool {
    if k < 2 || !is_op(s.get(k - 1), b'.') || is_op(s.get(k + 1), b'(') {
        return false;
    }
    let x = &s[k - 2];
    is_op(Some(x), b')')
        || is_op(Some(x), b']')
        || x.kind == TokenKind::Param
        || (function_sources && matches!(x.kind, TokenKind::Ident | TokenKind::QuotedIdent))
}

/// True when the statement `s` has a function call in a FROM list (after `FROM`, `JOIN`,
/// `LATERAL`, or a comma of a FROM list), whose alias is the function's value.
fn has_function_source(s: &[Token]) -> bool {
    (0..s.len()).any(|k| {
        if !is_op(s.get(k + 1), b'(')
            || !matches!(s[k].kind, TokenKind::Ident | TokenKind::QuotedIdent)
        {
            return false;
        }
        // Skip a qualifier: `FROM pg_catalog.f(...)`.
        let mut p = k;
        while p >= 2 && is_op(s.get(p - 1), b'.') {
            p -= 2;
        }
        let Some(before) = p.checked_sub(1) else {
            return false;
        };
        if is_kw_in(s.get(before), &["from", "join", "lateral"]) {
            return true;
        }
        is_op(s.get(before), b',') && in_from_list(s, before)
    })
}

/// True when the comma at `at` separates items of a FROM list: the nearest clause word
/// before it at the same parenthesis depth is `FROM` (or `JOIN`).
fn in_from_list(s: &[Token], at: usize) -> bool {
    let mut depth = 0usize;
    for t in s[..at].iter().rev() {
        if is_op(Some(t), b')') {
            depth += 1;
        } else if is_op(Some(t), b'(') {
            if depth == 0 {
                return false;
            }
            depth -= 1;
        } else if depth == 0 && is_kw_in(Some(t), &["from", "join"]) {
            return true;
        } else if depth == 0 && is_kw_in(Some(t), &CLAUSES) {
            return false;
        }
    }
    false
}

/// Words that start a clause other than FROM (a comma after them is not in a FROM list).
const CLAUSES: [&str; 14] = [
    "select",
    "where",
    "group",
    "having",
    "window",
    "order",
    "limit",
    "offset",
    "values",
    "set",
    "returning",
    "on",
    "using",
    "into",
];

/// True when `s` is `CREATE [UNIQUE] INDEX ...`, where `ON t (` names a table's columns.
fn creates_index(s: &[Token]) -> bool {
    is_kw(s.first(), "create")
        && (is_kw(s.get(1), "index") || (is_kw(s.get(1), "unique") && is_kw(s.get(2), "index")))
}

/// Common built-in functions, read as PostgreSQL's own when unqualified.
const BUILTINS: [&str; 24] = [
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "now",
    "lower",
    "upper",
    "length",
    "abs",
    "round",
    "floor",
    "ceil",
    "substring",
    "substr",
    "concat",
    "date_trunc",
    "to_char",
    "array_agg",
    "string_agg",
    "current_setting",
    "json_build_object",
    "jsonb_build_object",
    "row_number",
];

#[cfg(test)]
mod tests {
    use super::super::Lexer;
    use super::*;

    fn of(sql: &str) -> Leftover {
        let toks: Vec<Token> = Lexer::new(sql.as_bytes()).collect();
        leftover(Mentions::of(sql.as_bytes()), &toks)
    }

    #[test]
    fn pgbench_and_plain_queries_leave_nothing() {
        for t in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
            "BEGIN",
            "END",
            "COMMIT",
            "SELECT count(*), coalesce(max(x), 0) FROM t WHERE y IN (1, 2) AND EXISTS (SELECT 1)",
            "SELECT current_setting('app.current_tenant')",
            "SELECT x::varchar(10), CAST(y AS numeric(10, 2)) FROM t",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            // A table's alias: `t.a` is a column (unless a function of its row type exists).
            "SELECT t.a, u.b FROM t, u WHERE t.id = lower($1)",
            "SELECT t.a FROM t WHERE t.b IN (SELECT count(*) FROM u)",
        ] {
            assert_eq!(of(t), Leftover::Nothing, "{t}");
        }
    }

    #[test]
    fn writes_and_sequences_are_swept() {
        for t in [
            "UPDATE pgbench_accounts SET abalance = abalance + -4711 WHERE aid = 31",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP)",
            "INSERT INTO public.t (a) VALUES (1)",
            "SELECT nextval('s')",
            "SELECT currval('s')",
            "SELECT pg_catalog.now()",
            "SELECT * INTO t2 FROM t",
            "WITH a AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT * FROM a",
            "CREATE TABLE t (a int)",
            "COPY t (a) FROM STDIN",
            "CREATE FUNCTION public.f(int) RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE INDEX ON t (a)",
            "CREATE UNIQUE INDEX i ON public.t (a)",
            // A sequence call in a join condition is a call.
            "SELECT * FROM a JOIN b ON nextval('s') > 0",
            "SELECT ('s'::regclass).nextval",
        ] {
            assert_eq!(of(t), Leftover::Sweep, "{t}");
        }
    }

    #[test]
    fn unseen_code_needs_discard_all() {
        for t in [
            "SELECT hyg_set()",
            "SELECT public.f(1)",
            "SELECT \"f\"()",
            "CALL p()",
            "SELECT * FROM t WHERE a = f(1)",
            "INSERT INTO t VALUES (f(1))",
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE FUNCTION \"pg_temp\".f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "SELECT PG_TEMP_3.f()",
            "SET search_path = pg_temp, public",
            "SELECT U&\"pg\\005ftemp\".f()",
            "DO $$BEGIN PERFORM 1; END$$",
            "SELECT 1; do 'begin end'",
            // A join condition calls its function (red-team: read as `CREATE INDEX ON t (c)`).
            "SELECT count(*) FROM x JOIN y ON set_pref('9MB') IS NOT NULL",
            "SELECT 1 FROM x JOIN y ON public.set_pref('9MB') IS NOT NULL",
            "CREATE TABLE t2 AS SELECT 1 FROM x JOIN y ON f(1)",
            // Attribute notation: `(x).f` is `f(x)` (red-team: `('9MB'::text).set_pref`),
            // also after a subscript, a parameter, and a function's alias in FROM.
            "SELECT ('9MB'::text).set_pref",
            "SELECT ('9MB'::text).\"set_pref\"",
            "SELECT $1.set_pref",
            "SELECT ('{11MB}'::text[])[1].set_pref",
            "SELECT u.set_pref FROM upper('17MB') u",
            "SELECT u.set_pref FROM t, upper('17MB') AS u",
            "SELECT u.set_pref FROM t JOIN LATERAL lower(t.a) u ON true",
        ] {
            assert_eq!(of(t), Leftover::Unseen, "{t}");
        }
    }
}
