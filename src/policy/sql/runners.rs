//! Functions that run a query handed to them as text: `query_to_xml` and its two
//! siblings, `ts_stat` and `ts_rewrite` (built in), and tablefunc's `crosstab` and
//! `connectby` (which splices its text arguments into a query). Whatever that query does
//! happens in the caller's transaction, so it is SQL the guard must read: a query written as
//! a literal is scanned like the statement around it, and one built at run time
//! (`'SELECT set_' || 'config(...)'`, a column, a `$1`) cannot be verified.
//!
//! These functions and `set_config` are also refused when named without being called
//! (`SFUNC = ts_rewrite` in CREATE AGGREGATE, `FUNCTION = set_config` in CREATE OPERATOR,
//! `'set_config'::regproc`): the aggregate or operator would call them later, under a name
//! the guard never sees.
//!
//! Last, what reaches other sessions is refused outright: every tenant reaches PostgreSQL as
//! the same role, so `pg_stat_activity` would show other tenants' queries (literals
//! included, and an idle backend's last query is the previous client's),
//! `pg_prepared_statements` the statements earlier clients prepared on the backend, and
//! `pg_terminate_backend`/`pg_cancel_backend` would end or cancel another tenant's work.
//! `table_to_xml` reads a relation named at run time, so it needs a literal name, and
//! `schema_to_xml`/`database_to_xml` read whole schemas.

use std::borrow::Cow;

use super::{GuardViolation, MAX_DEPTH, Token, TokenKind, is_op, lift, literal_at, parse_name};

/// Names (matched case-insensitively, or exactly when quoted) and which arguments are
/// query text. `None` in place of an argument count means any count.
const RUNNERS: [(&str, &[usize], Option<usize>); 13] = [
    ("query_to_xml", &[0], None),
    ("query_to_xmlschema", &[0], None),
    ("query_to_xml_and_xmlschema", &[0], None),
    ("ts_stat", &[0], None),
    // ts_rewrite(query, select text); the three-argument form takes tsqueries only.
    ("ts_rewrite", &[1], Some(2)),
    ("crosstab", &[0, 1], None),
    ("crosstab2", &[0], None),
    ("crosstab3", &[0], None),
    ("crosstab4", &[0], None),
    ("connectby", &[0, 1, 2, 3, 4, 5, 6], None),
    // These read the relation named by their first argument (a regclass).
    ("table_to_xml", &[0], None),
    ("table_to_xmlschema", &[0], None),
    ("table_to_xml_and_xmlschema", &[0], None),
];

/// Relations and functions that show other sessions' SQL, dump whole schemas, or signal
/// other sessions (every tenant's backends belong to the same role, so a tenant could
/// cancel or end another tenant's transaction).
const OTHER_SESSIONS: [&str; 13] = [
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_stat_activity",
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_prepared_statements",
    "pg_prepared_statement",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
];

/// Substrings that make a string literal worth lexing as SQL: a function body written in
/// plain quotes may call a runner with its own argument.
pub(super) const TRIGGERS: [&[u8]; 5] = [
    b"query_to_xml",
    b"ts_stat",
    b"ts_rewrite",
    b"crosstab",
    b"connectby",
];

/// A cheap first look, so most identifiers are not compared with every name: all the names
/// here are 7 to 29 bytes long and start with one of these letters.
pub(super) fn candidate(t: &Token) -> bool {
    (7..=29).contains(&t.text.len())
        && matches!(t.text[0] | 0x20, b'c' | b'd' | b'p' | b'q' | b's' | b't')
}

/// True when `t` spells `name` (any case unquoted, exactly when quoted).
fn spells(t: &Token, name: &str) -> bool {
    match t.kind {
        TokenKind::Ident => t.text.eq_ignore_ascii_case(name.as_bytes()),
        TokenKind::QuotedIdent => t.text == name.as_bytes(),
        _ => false,
    }
}

/// Refuses `set_config` or a runner named at `i` without a call after it, and any mention
/// of what shows other sessions' SQL.
pub(super) fn check_reference(toks: &[Token], i: usize) -> Option<GuardViolation> {
    let t = toks.get(i)?;
    if let Some(name) = OTHER_SESSIONS.iter().find(|n| spells(t, n)) {
        return Some(GuardViolation::new(format!(
            "{name} (reaches other tenants' sessions)"
        )));
    }
    if is_op(toks.get(i + 1), b'(') {
        return None;
    }
    let name = std::iter::once("set_config")
        .chain(RUNNERS.iter().map(|r| r.0))
        .find(|n| spells(t, n))?;
    Some(GuardViolation::new(format!("{name} named as a function")))
}

/// The runner named by the token at `i`, when a call follows it.
fn runner_at(toks: &[Token], i: usize) -> Option<(&'static str, &'static [usize], Option<usize>)> {
    let t = toks.get(i)?;
    if !is_op(toks.get(i + 1), b'(') {
        return None;
    }
    RUNNERS.iter().find(|(n, _, _)| spells(t, n)).copied()
}

/// Token ranges of the top-level arguments of the call whose `(` is at `open`.
fn arguments(toks: &[Token], open: usize) -> Vec<(usize, usize)> {
    let (mut args, mut depth, mut start) = (Vec::new(), 0usize, open + 1);
    for (k, t) in toks.iter().enumerate().skip(open + 1) {
        if t.kind != TokenKind::Op {
            continue;
        }
        match t.text {
            b"(" | b"[" => depth += 1,
            b")" | b"]" if depth > 0 => depth -= 1,
            b")" => {
                if k > start || !args.is_empty() {
                    args.push((start, k));
                }
                return args;
            }
            b"," if depth == 0 => {
                args.push((start, k));
                start = k + 1;
            }
            _ => {}
        }
    }
    args.push((start, toks.len()));
    args
}

/// The query text of argument `(start, end)` when it is a literal (casts allowed); None
/// when it is anything else.
fn literal_query<'t>(toks: &[Token<'t>], (start, end): (usize, usize)) -> Option<Cow<'t, [u8]>> {
    let (value, mut n) = literal_at(toks, start)?;
    while n < end && is_op(toks.get(n), b':') && is_op(toks.get(n + 1), b':') {
        n = parse_name(toks, n + 2)?.1;
    }
    (n == end).then_some(value)
}

/// Checks a runner call at `i`: queues its literal queries for scanning one level deeper,
/// and refuses a query it cannot read.
pub(super) fn check_runner<'a>(
    toks: &[Token<'_>],
    i: usize,
    base: Option<&'a [u8]>,
    depth: usize,
    work: &mut Vec<(Cow<'a, [u8]>, usize)>,
) -> Option<GuardViolation> {
    let (name, queries, count) = runner_at(toks, i)?;
    let args = arguments(toks, i + 1);
    if count.is_some_and(|c| c != args.len()) {
        return None;
    }
    for &q in queries {
        let Some(&arg) = args.get(q) else { continue };
        let number = arg.1 == arg.0 + 1 && toks[arg.0].kind == TokenKind::Number;
        match literal_query(toks, arg) {
            Some(v) if depth < MAX_DEPTH => work.push((lift(base, v), depth + 1)),
            None if number => {}
            _ => {
                return Some(GuardViolation::new(format!("{name}(<non-literal query>)")));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::{Lexer, find_protected_change};
    use super::*;

    fn refused(sql: &str) -> Option<String> {
        find_protected_change(sql.as_bytes(), &["app.current_tenant".to_string()])
            .map(|v| v.setting)
    }

    #[test]
    fn splits_top_level_arguments() {
        let toks: Vec<Token> = Lexer::new(b"f(a, g(b, c), 'x''y', [1, 2])").collect();
        let args = arguments(&toks, 1);
        let texts: Vec<Vec<&[u8]>> = args
            .iter()
            .map(|&(s, e)| toks[s..e].iter().map(|t| t.text).collect())
            .collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert_eq!(texts[0], vec![&b"a"[..]]);
        assert_eq!(texts[2], vec![&b"x''y"[..]]);
        assert!(arguments(&Lexer::new(b"f()").collect::<Vec<_>>(), 1).is_empty());
    }

    #[test]
    fn literal_queries_are_scanned_and_built_ones_refused() {
        let set = "set_config(''app.current_tenant'', ''x'', true)";
        assert_eq!(
            refused("SELECT query_to_xml('SELECT 1', true, false, '')"),
            None
        );
        assert_eq!(
            refused("SELECT * FROM ts_stat('SELECT v FROM docs')::text"),
            None
        );
        assert_eq!(
            refused(&format!(
                "SELECT query_to_xml('SELECT {set}', true, false, '')"
            )),
            Some("app.current_tenant".into())
        );
        for sql in [
            "SELECT query_to_xml('SELECT set_' || 'config(...)', true, false, '')".to_string(),
            "SELECT pg_catalog.\"query_to_xml\"(q, true, false, '') FROM t".to_string(),
            "SELECT QUERY_TO_XML_AND_XMLSCHEMA($1, true, false, '')".to_string(),
            "SELECT * FROM ts_stat(format('SELECT %s', 1))".to_string(),
            "SELECT ts_rewrite('a'::tsquery, 'SELECT ' || 'x')".to_string(),
            "SELECT * FROM crosstab('SELECT 1', $1) AS t(a int)".to_string(),
            // A function body in plain quotes that hands its argument to a runner.
            "CREATE FUNCTION pg_temp.run(q text) RETURNS xml LANGUAGE sql AS 'SELECT query_to_xml(q, true, false, '''')'".to_string(),
        ] {
            assert!(refused(&sql).is_some_and(|s| s.ends_with("(<non-literal query>)")), "{sql}");
        }
        // Named, not called: an aggregate or operator would call them later.
        for sql in [
            "CREATE AGGREGATE pg_temp.ctx(text, boolean) (SFUNC = pg_catalog.set_config, STYPE = text)",
            "CREATE AGGREGATE pg_temp.run(text) (SFUNC = \"ts_rewrite\", STYPE = tsquery)",
            "CREATE OPERATOR pg_temp.### (LEFTARG = tsquery, RIGHTARG = text, FUNCTION = ts_rewrite)",
            "SELECT 'set_config'::regproc",
        ] {
            assert!(
                refused(sql).is_some_and(|s| s.ends_with("named as a function")),
                "{sql}"
            );
        }
        // Other sessions' SQL, however it is reached.
        for sql in [
            "SELECT query FROM pg_stat_activity",
            "SELECT * FROM pg_catalog.\"pg_prepared_statements\"",
            "SELECT pg_stat_get_backend_activity(s) FROM generate_series(1, 9) s",
            "SELECT query_to_xml('SELECT query FROM pg_stat_activity', true, false, '')",
            "SELECT table_to_xml('pg_stat_activity', true, false, '')",
            "SELECT schema_to_xml('pg_catalog', true, false, '')",
            "SELECT pg_terminate_backend(pid) FROM t",
            "SELECT pg_catalog.pg_cancel_backend(42)",
        ] {
            assert!(
                refused(sql).is_some_and(|s| s.ends_with("(reaches other tenants' sessions)")),
                "{sql}"
            );
        }
        assert!(
            refused("SELECT table_to_xml(('pg_stat_' || 'activity')::regclass, true, false, '')")
                .is_some_and(|s| s.ends_with("(<non-literal query>)"))
        );
        assert_eq!(
            refused("SELECT table_to_xml('invoices', true, false, '')"),
            None
        );
        // The three-argument ts_rewrite takes tsqueries, not a query; crosstab's row count.
        assert_eq!(
            refused("SELECT ts_rewrite(q, to_tsquery('a'), to_tsquery('b')) FROM t"),
            None
        );
        assert_eq!(
            refused("SELECT * FROM crosstab('SELECT 1', 3) AS t(a int)"),
            None
        );
    }
}
