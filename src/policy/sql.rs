//! Small, panic-free PostgreSQL SQL lexer plus the classifiers the proxy needs.
//!
//! The proxy never rewrites client SQL, it only inspects it. Assumptions and limits:
//! - `standard_conforming_strings = on` (the default since 9.1): backslashes in `'...'` are
//!   literal, and the client encoding is one whose characters never contain a backslash;
//!   the guard refuses the values that would break either (see [`readable`]).
//! - Runtime string building (`EXECUTE 'SE' || 'T ...'`, `format(...)` with `%I`) can't be fully
//!   verified; string bodies are only checked heuristically (see [`find_protected_change`]).
//! - Known false positive: a literal such as `SELECT 'SET app.current_tenant = 1'` is flagged,
//!   because literals containing `set `/`reset `/`set_config` are lexed as SQL.

use super::mentions::{Mentions, Word};
use std::borrow::Cow;

mod classify;
mod leftover;
mod lexer;
mod readable;
mod runners;
use classify::{
    context_clearing, kept_state, names_channel, no_transaction_block, resets_session,
    session_state, setup_prefix, sql_prepared, transaction_setup,
};
pub use classify::{
    is_no_transaction_block, is_plain_begin, may_change_session_state, uses_sql_prepared_statements,
};
pub use leftover::Leftover;
pub use lexer::{Lexer, Token, TokenKind};
pub use readable::{CLIENT_ONLY_ENCODINGS, unreadable};

/// Why a statement was refused by the context guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardViolation {
    /// Normalized lowercase name of the protected setting (or a `<non-literal name>` marker).
    pub setting: String,
    /// The SQLSTATE the client gets (42501 unless the allow-list says otherwise).
    pub code: &'static str,
    /// Statement kinds refused only by the allow-list: a database whose `guard_allow` lists
    /// them all lets the text through (empty: never).
    pub widenable: Vec<String>,
    /// Where a syntax error stopped PostgreSQL's grammar (1-based characters), as
    /// PostgreSQL reports it.
    pub position: Option<u32>,
}

impl GuardViolation {
    /// A refusal with SQLSTATE 42501 that no database setting widens.
    pub fn new(setting: String) -> GuardViolation {
        GuardViolation {
            setting,
            code: crate::protocol::sqlstate::INSUFFICIENT_PRIVILEGE,
            widenable: Vec::new(),
            position: None,
        }
    }

    /// True when a database that allows the statement kinds `allowed` lets this through.
    pub fn widened_by(&self, allowed: &[String]) -> bool {
        !self.widenable.is_empty() && self.widenable.iter().all(|k| allowed.contains(k))
    }

    /// The ErrorResponse text: the protected setting, or what the guard could not let through.
    pub fn message(&self) -> String {
        if self.code == crate::protocol::sqlstate::SYNTAX_ERROR
            || self.code == crate::protocol::sqlstate::PROGRAM_LIMIT_EXCEEDED
        {
            return self.setting.clone();
        }
        let setting = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.';
        if self.setting.bytes().all(setting) {
            format!(
                "permission denied to set parameter \"{}\": {}",
                self.setting,
                super::knowledge::protection_reason(&self.setting)
            )
        } else {
            format!("permission denied by pgtenant's guard: {}", self.setting)
        }
    }
}

const MAX_DEPTH: usize = 4;
const SET_CONFIG_UNVERIFIABLE: &str = "set_config(<non-literal name>)";
const SET_UNVERIFIABLE: &str = "set <non-literal name>";

fn is_kw(t: Option<&Token>, kw: &str) -> bool {
    t.is_some_and(|t| t.kind == TokenKind::Ident && t.text.eq_ignore_ascii_case(kw.as_bytes()))
}

fn is_kw_in(t: Option<&Token>, kws: &[&str]) -> bool {
    kws.iter().any(|k| is_kw(t, k))
}

fn is_op(t: Option<&Token>, op: u8) -> bool {
    t.is_some_and(|t| t.kind == TokenKind::Op && t.text == [op])
}

/// Case-insensitive substring test, run on every Query and Parse text. Candidates are
/// found with memchr on the needle's first byte that has no case (`_`, `&`, `"`: rare in
/// SQL), or on both cases of its first letter, so the whole text is not compared window
/// by window (that loop was the guard's largest cost on texts with inline literals).
pub(crate) fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let fits = |start: usize| {
        hay.get(start..start + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    };
    match needle.iter().position(|b| !b.is_ascii_alphabetic()) {
        Some(at) => {
            memchr::memchr_iter(needle[at], hay).any(|p| p.checked_sub(at).is_some_and(fits))
        }
        None => {
            let (lo, up) = (
                needle[0].to_ascii_lowercase(),
                needle[0].to_ascii_uppercase(),
            );
            memchr::memchr2_iter(lo, up, hay).any(fits)
        }
    }
}

/// Reads up to `max` digits of `radix` at `i`; returns the value and the digit count.
fn digits(s: &[u8], i: usize, max: usize, radix: u32) -> (u32, usize) {
    let (mut v, mut n) = (0u32, 0);
    while n < max
        && let Some(d) = s.get(i + n).and_then(|&b| (b as char).to_digit(radix))
    {
        (v, n) = (v.wrapping_mul(radix).wrapping_add(d), n + 1);
    }
    (v, n)
}

/// Value of a quoted token body: collapses doubled quotes and decodes E'' / U&'' escapes
/// (`esc` is the U& escape character); borrows when nothing needs decoding.
fn decode(s: &[u8], kind: TokenKind, esc: u8) -> Cow<'_, [u8]> {
    let q = if kind == TokenKind::QuotedIdent {
        b'"'
    } else {
        b'\''
    };
    let u = kind == TokenKind::UStr;
    let escapes = u || kind == TokenKind::EStr;
    if !(s.contains(&q) || escapes && s.contains(&esc)) {
        return Cow::Borrowed(s);
    }
    let (mut out, mut i) = (Vec::with_capacity(s.len()), 0);
    while let Some(&c) = s.get(i) {
        i += 1;
        if c == q && s.get(i) == Some(&q) {
            i += 1;
        }
        if !escapes || c != esc {
            out.push(c);
            continue;
        }
        let Some(&e) = s.get(i) else { break };
        let (radix, max, start) = match e {
            _ if e == esc => (16, 0, i),
            b'+' if u => (16, 6, i + 1),
            _ if u => (16, 4, i),
            b'0'..=b'7' => (8, 3, i),
            b'x' => (16, 2, i + 1),
            b'u' => (16, 4, i + 1),
            b'U' => (16, 8, i + 1),
            _ => (16, 0, i),
        };
        let (v, n) = digits(s, start, max, radix);
        if n == 0 {
            let simple = b"b\x08f\x0cn\nr\rt\t".chunks(2).find(|p| !u && p[0] == e);
            out.push(simple.map_or(e, |p| p[1]));
            i += 1;
        } else if !u && (radix == 8 || e == b'x') {
            out.push(v as u8);
            i = start + n;
        } else {
            let mut buf = [0u8; 4];
            let ch = char::from_u32(v).unwrap_or(char::REPLACEMENT_CHARACTER);
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            i = start + n;
        }
    }
    Cow::Owned(out)
}

/// Reads the (possibly implicitly concatenated) string literal at `k`; returns its value and the next index.
fn literal_at<'t>(toks: &[Token<'t>], mut k: usize) -> Option<(Cow<'t, [u8]>, usize)> {
    use TokenKind::*;
    let mut out: Option<Cow<'t, [u8]>> = None;
    while let Some(t) = toks.get(k) {
        let mut esc = b'\\';
        match t.kind {
            DollarStr if out.is_none() => return Some((Cow::Borrowed(t.text), k + 1)),
            Str | EStr | BitStr => {}
            UStr => {
                let custom = toks
                    .get(k + 2)
                    .filter(|e| e.kind == Str && e.text.len() == 1);
                if let Some(&e) = custom.and_then(|e| e.text.first())
                    && is_kw(toks.get(k + 1), "uescape")
                {
                    (esc, k) = (e, k + 2);
                }
            }
            _ => break,
        }
        let v = decode(t.text, t.kind, esc);
        out = Some(match out {
            None => v,
            Some(prev) => {
                let mut acc = prev.into_owned();
                acc.extend_from_slice(&v);
                Cow::Owned(acc)
            }
        });
        k += 1;
    }
    out.map(|v| (v, k))
}

/// Parses a possibly dotted/quoted setting name at `k`, lowercased; returns it and the next index.
fn parse_name(toks: &[Token], mut k: usize) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    loop {
        let t = toks.get(k)?;
        match t.kind {
            TokenKind::Ident => out.extend_from_slice(t.text),
            TokenKind::QuotedIdent => out.extend_from_slice(&decode(t.text, t.kind, 0)),
            _ => return None,
        }
        k += 1;
        if !is_op(toks.get(k), b'.') {
            break;
        }
        out.push(b'.');
        k += 1;
    }
    out.make_ascii_lowercase();
    Some((out, k))
}

fn violation(setting: &str) -> Option<GuardViolation> {
    Some(GuardViolation::new(setting.to_ascii_lowercase()))
}

fn protected_match(name: &[u8], protected: &[String]) -> Option<GuardViolation> {
    let p = protected
        .iter()
        .find(|p| p.as_bytes().eq_ignore_ascii_case(name));
    violation(p?)
}

/// SET/RESET forms whose parameter isn't written as a plain name: (word, next word, setting).
const IMPLICIT: [(&str, &str, &str); 5] = [
    ("session", "authorization", "session_authorization"),
    ("time", "zone", "timezone"),
    ("xml", "option", "xmloption"),
    ("names", "", "client_encoding"),
    ("schema", "", "search_path"),
];

/// Where the SET/RESET at `i` sits: `Some(true)` starts a statement, `Some(false)` is a clause
/// of ALTER or CREATE FUNCTION/PROCEDURE (`clause`), `None` is anything else (`UPDATE t SET`).
fn set_context(toks: &[Token], stmt: usize, i: usize, clause: bool) -> Option<bool> {
    let prev = |n: usize| i.checked_sub(n).and_then(|k| toks.get(k));
    // PL/pgSQL bodies: `BEGIN SET ...`, `THEN SET ...`; not `UPDATE begin SET ...` (a table named begin).
    let block = is_kw_in(prev(1), &["begin", "then", "else", "loop", "atomic"]);
    let table_ref = is_kw_in(prev(2), &["update", "only", "as"]) || is_op(prev(2), b'.');
    if i == stmt || (block && !table_ref) {
        return Some(true);
    }
    clause.then_some(false)
}

/// Checks the SET/RESET at `i`.
fn check_set(
    toks: &[Token],
    i: usize,
    start: bool,
    nested: bool,
    prot: &[String],
) -> Option<GuardViolation> {
    let reset = is_kw(toks.get(i), "reset");
    let kw = |k: usize, w: &str| is_kw(toks.get(k), w);
    let mut j = i + 1;
    if start && (kw(j, "local") || (kw(j, "session") && !kw(j + 1, "authorization"))) {
        j += 1;
    }
    let implicit = IMPLICIT
        .iter()
        .find(|(a, b, _)| kw(j, a) && (b.is_empty() || kw(j + 1, b)));
    if let Some((_, _, name)) = implicit.filter(|_| start) {
        // `SET NAMES 'SJIS'`: the value follows the keyword.
        let value = value_at(toks, j + 1).unwrap_or_default();
        let unreadable = readable::unreadable(name.as_bytes(), &value);
        return unreadable
            .and_then(violation)
            .or_else(|| protected_match(name.as_bytes(), prot));
    }
    let Some((name, after)) = parse_name(toks, j) else {
        // `EXECUTE 'SET ' || ...` or `format('SET %I = %L', ...)`: the name can't be verified.
        let opaque = toks.get(j).is_none() || is_op(toks.get(j), b'%');
        return violation(SET_UNVERIFIABLE).filter(|_| nested && start && opaque);
    };
    if reset && name == b"all" {
        // RESET ALL only clears settings: it can leave a client with no context, never with
        // another tenant's, and drivers send it, so it is allowed (the proxy re-injects).
        return None;
    }
    let assign = kw(after, "to") || kw(after, "from") || is_op(toks.get(after), b'=');
    if assign && readable::is_lexing_setting(&name) {
        let value = value_at(toks, after + 1).unwrap_or_default();
        if let Some(why) = readable::unreadable(&name, &value) {
            return violation(why);
        }
    }
    protected_match(&name, prot).filter(|_| start || reset || assign)
}

/// The value written at `k` in a SET: a literal, a bare word or a number.
fn value_at<'t>(toks: &[Token<'t>], k: usize) -> Option<Cow<'t, [u8]>> {
    let t = toks.get(k)?;
    match t.kind {
        TokenKind::Ident | TokenKind::Number => Some(Cow::Borrowed(t.text)),
        _ => literal_at(toks, k).map(|(v, _)| v),
    }
}

/// Checks the first argument of `set_config(` whose arguments start at `k`.
fn check_set_config(toks: &[Token], k: usize, protected: &[String]) -> Option<GuardViolation> {
    let Some((value, mut n)) = literal_at(toks, k) else {
        return violation(SET_CONFIG_UNVERIFIABLE);
    };
    while is_op(toks.get(n), b':') && is_op(toks.get(n + 1), b':') {
        match parse_name(toks, n + 2) {
            Some((_, m)) => n = m,
            None => break,
        }
    }
    if !(is_op(toks.get(n), b',') || is_op(toks.get(n), b')')) {
        return violation(SET_CONFIG_UNVERIFIABLE);
    }
    let name = value.to_ascii_lowercase();
    if readable::is_lexing_setting(&name) {
        // The value decides how PostgreSQL reads what follows: it has to be a literal.
        let literal = literal_at(toks, n + 1).and_then(|(v, mut m)| {
            while is_op(toks.get(m), b':') && is_op(toks.get(m + 1), b':') {
                m = parse_name(toks, m + 2)?.1;
            }
            (is_op(toks.get(m), b',') || is_op(toks.get(m), b')')).then_some(v)
        });
        let Some(v) = literal else {
            return violation("set_config(<encoding or string setting>, <non-literal value>)");
        };
        if let Some(why) = readable::unreadable(&name, &v) {
            return violation(why);
        }
    }
    protected_match(&value, protected)
}

/// True for the languages whose bodies the guard reads: `sql` and `plpgsql`, written as a
/// word or a literal.
fn is_readable_language(t: Option<&Token>) -> bool {
    let Some(t) = t else { return true };
    let name: &[u8] = match t.kind {
        TokenKind::Ident | TokenKind::QuotedIdent | TokenKind::Str => t.text,
        _ => return false,
    };
    name.eq_ignore_ascii_case(b"sql") || name.eq_ignore_ascii_case(b"plpgsql")
}

/// Matches `set_config` written plainly or as the quoted identifier `"set_config"`.
fn is_set_config(t: &Token) -> bool {
    let quoted = t.kind == TokenKind::QuotedIdent && t.text == b"set_config";
    quoted || is_kw(Some(t), "set_config")
}

/// True when the `pg_settings` at `i` is the target of `UPDATE [ONLY] [pg_catalog.]pg_settings`.
fn is_pg_settings_update(toks: &[Token], i: usize) -> bool {
    let prev = |n: usize| i.checked_sub(n).and_then(|k| toks.get(k));
    let k = if is_op(prev(1), b'.') { 3 } else { 1 };
    is_kw_in(prev(k), &["update", "only"])
}

/// True when `EXECUTE` at `k` runs one plain string literal (checked like any literal).
fn is_plain_execute(toks: &[Token], k: usize) -> bool {
    use TokenKind::*;
    let literal = toks
        .get(k)
        .is_some_and(|t| matches!(t.kind, Str | EStr | UStr | DollarStr));
    let end = toks.get(k + 1);
    literal && (end.is_none() || is_op(end, b';') || is_kw_in(end, &["using", "into"]))
}

/// A literal is lexed as SQL only when it could change a setting or run SQL the guard has
/// not read: a `SET`/`RESET` word (whatever follows it: `SET/**/x`, `SET"x"`), set_config,
/// `EXECUTE` (a function body's dynamic SQL), or a function that runs a query given as text.
fn has_trigger(v: &[u8]) -> bool {
    let set_word = |w: &[u8]| w[..3].eq_ignore_ascii_case(b"set") && !lexer::is_ident_cont(w[3]);
    // The shortest of the longer words is 7 bytes long.
    let long_words = || {
        v.len() >= 7
            && (contains_ci(v, b"set_config")
                || contains_ci(v, b"execute")
                || runners::TRIGGERS.iter().any(|t| contains_ci(v, t)))
    };
    v.windows(4).any(set_word)
        || v.get(v.len().saturating_sub(3)..)
            .is_some_and(|e| e.eq_ignore_ascii_case(b"set"))
        || long_words()
}

/// Re-borrows `v` from the frame's input when possible so nested bodies stay allocation-free.
fn lift<'a>(base: Option<&'a [u8]>, v: Cow<'_, [u8]>) -> Cow<'a, [u8]> {
    if let (Some(src), Cow::Borrowed(s)) = (base, &v) {
        let off = (s.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize);
        if let Some(sub) = off.checked_add(s.len()).and_then(|end| src.get(off..end)) {
            return Cow::Borrowed(sub);
        }
    }
    Cow::Owned(v.into_owned())
}

/// Scans one text (top level or a string body); queues string bodies on `work`.
fn scan_frame<'a>(
    toks: &[Token<'_>],
    base: Option<&'a [u8]>,
    depth: usize,
    protected: &[String],
    work: &mut Vec<(Cow<'a, [u8]>, usize)>,
) -> Option<GuardViolation> {
    use TokenKind::*;
    let (mut stmt, mut i) = (0, 0);
    // Per-statement state: saw ALTER; saw CREATE; then FUNCTION/PROCEDURE; then UPDATE.
    let (mut alter, mut create, mut func, mut update) = (false, false, false, false);
    while let Some(t) = toks.get(i) {
        // Function bodies and DO blocks are read as SQL or PL/pgSQL; code in any other
        // language (PL/Perl's spi_exec_query, PL/Tcl's spi_exec) could run SQL unread.
        let body_owner = func || is_kw(toks.get(stmt), "do");
        if body_owner && is_kw(Some(t), "language") && !is_readable_language(toks.get(i + 1)) {
            return violation("a function language other than sql or plpgsql");
        }
        if t.kind == Ident {
            let kw = |w: &str| is_kw(Some(t), w);
            alter |= kw("alter");
            create |= kw("create");
            func |= create && (kw("function") || kw("procedure"));
            update |= create && kw("update");
        }
        match t.kind {
            Op if t.text == b";" => {
                stmt = i + 1;
                (alter, create, func, update) = (false, false, false, false);
            }
            Ident | QuotedIdent if is_set_config(t) && is_op(toks.get(i + 1), b'(') => {
                let v = check_set_config(toks, i + 2, protected);
                if v.is_some() {
                    return v;
                }
            }
            Ident if is_kw_in(Some(t), &["set", "reset"]) => {
                let start = set_context(toks, stmt, i, alter || (func && !update));
                let v = start.and_then(|start| check_set(toks, i, start, depth > 0, protected));
                if v.is_some() {
                    return v;
                }
            }
            // Dynamic SQL inside a function body or DO block (`EXECUTE 'SE' || 'T ...'`,
            // `EXECUTE format(...)`, `EXECUTE some_variable`) cannot be verified.
            Ident if depth > 0 && is_kw(Some(t), "execute") && !is_plain_execute(toks, i + 1) => {
                return violation("dynamic SQL in a function body");
            }
            // `UPDATE pg_settings SET setting = ... WHERE name = ...` calls set_config().
            Ident if is_kw(Some(t), "pg_settings") && is_pg_settings_update(toks, i) => {
                return violation("pg_settings");
            }
            // `query_to_xml('SELECT ...', ...)` and kin run their text argument; they and
            // set_config may not be named without a call (runners.rs).
            Ident | QuotedIdent if runners::candidate(t) => {
                let v = runners::check_runner(toks, i, base, depth, work)
                    .or_else(|| runners::check_reference(toks, i));
                if v.is_some() {
                    return v;
                }
            }
            Str | EStr | UStr | BitStr | DollarStr => {
                if let Some((v, next)) = literal_at(toks, i) {
                    if t.kind == DollarStr || has_trigger(&v) {
                        if depth >= MAX_DEPTH {
                            // Deeper bodies are not read, so they may not run either.
                            return violation("SQL nested too deep to verify");
                        }
                        work.push((lift(base, v), depth + 1));
                    }
                    i = next;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Everything the session needs to know about one Query or Parse, from one lexing pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// A protected setting the SQL tries to change.
    pub protected_change: Option<GuardViolation>,
    /// SQL-level PREPARE / EXECUTE / DEALLOCATE (not ALL).
    pub sql_prepared_statements: bool,
    /// May leave session-level state on the backend.
    pub changes_session_state: bool,
    /// A single statement that cannot run inside a transaction block.
    pub no_transaction_block: bool,
    /// Some statement ends the transaction or is RESET ALL or DISCARD ALL (what follows
    /// needs the context again).
    pub clears_context: bool,
    /// It drops, or may drop, settings, prepared statements or the transaction the proxy
    /// relies on (RESET ALL, DISCARD ALL, DEALLOCATE ALL, DO, CALL).
    pub resets_session: bool,
    /// Every statement only sets up the transaction (BEGIN with options, SET TRANSACTION):
    /// it must run before the context, which takes the transaction's snapshot.
    pub transaction_setup: bool,
    /// The first statement sets up the transaction and others follow (the session may
    /// split the text after the setup).
    pub setup_prefix: bool,
    /// Session state a statement visibly keeps after its transaction (for pinning).
    pub keeps_state: Option<&'static str>,
    /// The text may name a LISTEN/NOTIFY channel (scoped per tenant).
    pub names_channel: bool,
    /// What the text may leave that no statement names (the release rule).
    pub leftover: Leftover,
}

/// Lexes `sql` once and answers every question the relay asks about it.
pub fn analyze(sql: &[u8], protected: &[String]) -> Analysis {
    analyze_mentioning(sql, Mentions::of(sql), protected)
}

/// [`analyze`] for a text whose [`Mentions`] are known.
pub(crate) fn analyze_mentioning(sql: &[u8], m: Mentions, protected: &[String]) -> Analysis {
    // Sized for typical SQL (a token per 5 bytes or so): one allocation, no regrowth.
    let mut toks: Vec<Token> = Vec::with_capacity(sql.len() / 4 + 8);
    toks.extend(Lexer::new(sql));
    let (clears, followed) = context_clearing(&toks);
    let after_end = || {
        followed.then(|| {
            GuardViolation::new("statements after COMMIT, ROLLBACK or RESET ALL in one query (they would run without the tenant context)".into())
        })
    };
    Analysis {
        protected_change: protected_change(sql, m, &toks, protected).or_else(after_end),
        sql_prepared_statements: sql_prepared(&toks),
        changes_session_state: session_state(m, &toks),
        no_transaction_block: no_transaction_block(&toks),
        clears_context: clears,
        resets_session: resets_session(&toks),
        transaction_setup: transaction_setup(&toks),
        setup_prefix: setup_prefix(&toks),
        keeps_state: kept_state(m, &toks),
        names_channel: names_channel(m),
        leftover: leftover::leftover(m, &toks),
    }
}

/// Returns the first protected setting that `sql` tries to change, if any.
/// `protected` holds lowercase setting names like "app.current_tenant", "role", "session_authorization".
pub fn find_protected_change(sql: &[u8], protected: &[String]) -> Option<GuardViolation> {
    let toks: Vec<Token> = Lexer::new(sql).collect();
    protected_change(sql, Mentions::of(sql), &toks, protected)
}

fn protected_change(
    sql: &[u8],
    m: Mentions,
    toks: &[Token],
    protected: &[String],
) -> Option<GuardViolation> {
    if protected.is_empty() {
        return None;
    }
    // Unicode-escaped identifiers (`U&"set\005fconfig"`) could spell any name; refuse them.
    if m.has(Word::UnicodeIdent) {
        return violation("unicode-escaped identifier");
    }
    let mut work = Vec::new();
    if let Some(v) = scan_frame(toks, Some(sql), 0, protected, &mut work) {
        return Some(v);
    }
    while let Some((data, depth)) = work.pop() {
        let base = match data {
            Cow::Borrowed(s) => Some(s),
            Cow::Owned(_) => None,
        };
        let nested: Vec<Token> = Lexer::new(&data).collect();
        if let Some(v) = scan_frame(&nested, base, depth, protected, &mut work) {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests;
