//! Reading the parse tree: pg_query's parse result serialized as generic JSON (so no node
//! kind can be skipped by a walk that did not know it), and the PL/pgSQL parser's output.

use serde_json::Value;

use crate::policy::sql::{Lexer, Token, TokenKind};

thread_local! {
    /// Parses on this thread read strings as with `standard_conforming_strings = off`
    /// (see [`super::readings`]).
    static ESCAPING_STRINGS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every parse on this thread reading backslashes in ordinary strings as
/// escapes, as PostgreSQL does with `standard_conforming_strings = off`.
pub(super) fn with_escaping_strings<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ESCAPING_STRINGS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ESCAPING_STRINGS.with(|c| c.replace(true)));
    f()
}

/// Why the parse of a text stopped the check: PostgreSQL's grammar refused it (a syntax
/// error), or the tree it made is deeper than its decoder reads (about 50 nested operators;
/// PostgreSQL would run it, the guard cannot read it: a limit, not a syntax error).
pub(super) fn stop_of(e: pg_query::Error) -> super::Stop {
    match e {
        pg_query::Error::Parse(m) => super::Stop::Syntax(m),
        pg_query::Error::Decode(_) => super::Stop::Refused(crate::policy::GuardViolation {
            setting: "statement too complex for pgtenant's guard: its parse tree nests deeper than the guard reads (about 50 nested operators or parentheses); send it as a statement of its own, or nest less".into(),
            code: crate::protocol::sqlstate::PROGRAM_LIMIT_EXCEEDED,
            widenable: Vec::new(),
            position: None,
        }),
        other => super::Stop::Syntax(other.to_string()),
    }
}

/// PostgreSQL's grammar in `mode` (a PL/pgSQL expression's `parseMode`: 0 a statement,
/// 2 an expression, 3 to 5 an assignment to a name of 1 to 3 parts).
pub(super) fn parse_mode(sql: &str, mode: i64) -> pg_query::Result<pg_query::ParseResult> {
    use pg_query::ParserOptions as O;
    let mut options = match mode {
        2 => O::PLPGSQL_EXPR,
        3 => O::PLPGSQL_ASSIGN1,
        4 => O::PLPGSQL_ASSIGN2,
        5 => O::PLPGSQL_ASSIGN3,
        _ => O::DEFAULT,
    };
    if ESCAPING_STRINGS.with(|c| c.get()) {
        options |= O::DISABLE_STANDARD_CONFORMING_STRINGS;
    }
    pg_query::parse(sql, options)
}

/// The single key and value of a `{"Kind": {...}}` object.
pub(super) fn tagged(v: &Value) -> Option<(&str, &Value)> {
    let o = v.as_object()?;
    (o.len() == 1).then(|| o.iter().next().map(|(k, v)| (k.as_str(), v)))?
}

/// The node inside a `Node` wrapper (`{"node": {"Kind": {...}}}`).
pub(super) fn node(v: &Value) -> Option<(&str, &Value)> {
    tagged(v.get("node")?)
}

/// The `sval` of a `String` node.
pub(super) fn string_node(v: &Value) -> Option<&str> {
    let (k, s) = node(v)?;
    (k == "String").then(|| s.get("sval")?.as_str())?
}

/// The last name of a name list (`pg_catalog.set_config` → `set_config`).
pub(super) fn last_name(list: &Value) -> Option<&str> {
    list.as_array()?.last().and_then(string_node)
}

/// A constant argument: a string (through any casts), or `Err(true)` for a number,
/// `Err(false)` for anything that is not a constant.
pub(super) fn constant(v: &Value) -> Result<String, bool> {
    let (k, n) = node(v).ok_or(false)?;
    match k {
        "TypeCast" => constant(n.get("arg").ok_or(false)?),
        "AConst" => {
            let (vk, val) = n.get("val").and_then(tagged).ok_or(false)?;
            match vk {
                "Sval" => Ok(val.get("sval").and_then(Value::as_str).unwrap_or("").into()),
                "Ival" | "Fval" => Err(true),
                _ => Err(false),
            }
        }
        _ => Err(false),
    }
}

/// The unqualified name in a text such as `'public."Foo"'`, case-folded as PostgreSQL does.
pub(super) fn name_in_text(s: &str) -> String {
    let last = s.rsplit('.').next().unwrap_or("").trim();
    match last.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => last.to_ascii_lowercase(),
    }
}

/// True for object keys that hold a `{"Kind": {...}}` value directly (oneof fields such as
/// a `Node`'s `node`).
pub(super) fn is_kind(key: &str) -> bool {
    key == "node"
}

/// The kind of a typed field's value (a field declared as one node type is serialized
/// without its kind's name: `AlterRoleSetStmt.setstmt`, `UpdateStmt.relation`,
/// `CallStmt.funccall`), recognised by the fields only that kind has.
pub(super) fn typed_kind(v: &Value) -> Option<&'static str> {
    let o = v.as_object()?;
    let has = |keys: &[&str]| keys.iter().all(|k| o.contains_key(*k));
    if has(&["relname", "relpersistence"]) {
        Some("RangeVar")
    } else if has(&["kind", "name", "args", "is_local"]) {
        Some("VariableSetStmt")
    } else if has(&["funcname", "agg_star"]) {
        Some("FuncCall")
    } else {
        None
    }
}

/// The `language` and `as` (body) options of a DO or CREATE FUNCTION.
pub(super) fn body_options(opts: Option<&Value>) -> (Option<String>, Option<String>) {
    let (mut lang, mut body) = (None, None);
    for o in opts.and_then(Value::as_array).into_iter().flatten() {
        let Some(("DefElem", d)) = node(o) else {
            continue;
        };
        let arg = d.get("arg");
        match d.get("defname").and_then(Value::as_str) {
            Some("language") => lang = arg.and_then(string_node).map(str::to_ascii_lowercase),
            Some("as") => {
                body = arg.and_then(string_node).map(String::from).or_else(|| {
                    let (k, l) = node(arg?)?;
                    let items = l.get("items")?.as_array()?;
                    (k == "List" && items.len() == 1)
                        .then(|| items.first().and_then(string_node).map(String::from))?
                })
            }
            _ => {}
        }
    }
    (lang, body)
}

/// A CREATE FUNCTION text around a DO block's body, for the PL/pgSQL parser.
pub(super) fn wrap_do(body: &str) -> String {
    wrap(body, "void")
}

/// A CREATE FUNCTION text returning `returns` around `body`, for the PL/pgSQL parser.
fn wrap(body: &str, returns: &str) -> String {
    let mut tag = String::from("$pgtenant$");
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$pgtenant{n}$");
    }
    format!(
        "CREATE FUNCTION pg_temp.pgtenant_do() RETURNS {returns} LANGUAGE plpgsql AS {tag}{body}{tag}"
    )
}

/// A trigger function's body as a block nested in one that declares what PostgreSQL gives
/// trigger functions (NEW, OLD, TG_*), for the PL/pgSQL parser.
pub(super) fn trigger_wrap(body: &str) -> String {
    let inner = body.trim_end().trim_end_matches(';');
    wrap(
        &format!(
            "DECLARE new record; old record; tg_op text; tg_name text; tg_when text; \
         tg_level text; tg_relid oid; tg_table_name name; tg_table_schema name; \
         tg_relname name; tg_nargs int; tg_argv text[]; tg_event text; tg_tag text; \
         BEGIN {inner}; END"
        ),
        "record",
    )
}

/// The expression of `SELECT <q>`, for an EXECUTE's argument.
pub(super) fn expression(q: &str) -> Option<Value> {
    let parsed = parse_mode(q, 2).ok()?;
    let tree = serde_json::to_value(&parsed.protobuf).ok()?;
    let stmts = tree.get("stmts")?.as_array()?;
    if stmts.len() != 1 {
        return None;
    }
    let (_, select) = node(stmts[0].get("stmt")?)?;
    let targets = select.get("target_list")?.as_array()?;
    if targets.len() != 1 {
        return None;
    }
    let (_, res) = node(&targets[0])?;
    res.get("val").cloned()
}

/// Every PL/pgSQL expression: its query text, parse mode, and whether it is dynamic SQL
/// (EXECUTE's text).
pub(super) fn collect_exprs(v: &Value, dynamic: bool, out: &mut Vec<(String, i64, bool)>) {
    match v {
        Value::Object(o) => {
            if let Some(e) = o.get("PLpgSQL_expr") {
                let q = e.get("query").and_then(Value::as_str).unwrap_or("");
                let mode = e.get("parseMode").and_then(Value::as_i64).unwrap_or(0);
                out.push((q.to_string(), mode, dynamic));
                return;
            }
            for (k, c) in o {
                match k.as_str() {
                    // EXECUTE and FOR ... IN EXECUTE: `query` is the text to run.
                    "PLpgSQL_stmt_dynexecute" | "PLpgSQL_stmt_dynfors" => {
                        for (field, e) in c.as_object().into_iter().flatten() {
                            collect_exprs(e, field == "query", out);
                        }
                    }
                    // OPEN ... FOR EXECUTE, RETURN QUERY EXECUTE.
                    "dynquery" => collect_exprs(c, true, out),
                    _ => collect_exprs(c, dynamic, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| collect_exprs(c, dynamic, out)),
        _ => {}
    }
}

/// The name of a record variable declared with a default value in `body`, if any.
/// libpg_query's PL/pgSQL tree leaves a record variable's default out (it dumps only the
/// name of a `PLpgSQL_rec`), so an expression there (`r record := ROW(f())`) would run
/// unread. Found in the text instead: a declaration is a `;`-separated piece that starts
/// with the variable's name followed by a type (an assignment `r := ...` has an operator
/// there), with `=`, `:=` or DEFAULT in it.
pub(super) fn record_with_default(tree: &Value, body: &str) -> Option<String> {
    let mut names = Vec::new();
    record_names(tree, &mut names);
    if names.is_empty() {
        return None;
    }
    let toks: Vec<Token> = Lexer::new(body.as_bytes()).collect();
    for piece in toks.split(|t| t.kind == TokenKind::Op && t.text == b";") {
        // A declaration starts a piece or follows DECLARE, which a block label
        // (`<<l>> DECLARE`) or an outer block's BEGIN may precede.
        let declare = piece
            .iter()
            .rposition(|t| t.kind == TokenKind::Ident && t.text.eq_ignore_ascii_case(b"declare"));
        let piece = match declare {
            Some(i) => &piece[i + 1..],
            None => piece,
        };
        let (Some(name), Some(next)) = (piece.first(), piece.get(1)) else {
            continue;
        };
        let named = match name.kind {
            TokenKind::Ident => String::from_utf8_lossy(name.text).to_ascii_lowercase(),
            TokenKind::QuotedIdent => String::from_utf8_lossy(name.text).replace("\"\"", "\""),
            _ => continue,
        };
        let declared = matches!(next.kind, TokenKind::Ident | TokenKind::QuotedIdent);
        let has_default = piece.iter().any(|t| {
            (t.kind == TokenKind::Op && t.text == b"=")
                || (t.kind == TokenKind::Ident && t.text.eq_ignore_ascii_case(b"default"))
        });
        if declared && has_default && names.contains(&named) {
            return Some(named);
        }
    }
    None
}

/// The names of every record variable (`PLpgSQL_rec`) in a PL/pgSQL tree.
fn record_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(name) = o
                .get("PLpgSQL_rec")
                .and_then(|r| r.get("refname"))
                .and_then(Value::as_str)
            {
                out.push(name.to_string());
            }
            o.values().for_each(|c| record_names(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| record_names(c, out)),
        _ => {}
    }
}

/// PL/pgSQL statements that may end the transaction: COMMIT, ROLLBACK, and CALL (a
/// procedure may commit inside).
const ENDS_TRANSACTION: [&str; 3] = [
    "PLpgSQL_stmt_commit",
    "PLpgSQL_stmt_rollback",
    "PLpgSQL_stmt_call",
];

/// How many statements that may end the transaction a PL/pgSQL tree holds, at any depth.
pub(super) fn transaction_control(v: &Value) -> usize {
    match v {
        Value::Object(o) => {
            o.keys()
                .filter(|k| ENDS_TRANSACTION.contains(&k.as_str()))
                .count()
                + o.values().map(transaction_control).sum::<usize>()
        }
        Value::Array(a) => a.iter().map(transaction_control).sum(),
        _ => 0,
    }
}

/// True when the function's outermost block ends with a COMMIT, ROLLBACK or CALL (before the
/// RETURN PL/pgSQL adds).
pub(super) fn ends_with_transaction_control(tree: &Value) -> bool {
    let body = tree
        .as_array()
        .and_then(|a| a.first())
        .and_then(|f| f.get("PLpgSQL_function"))
        .and_then(|f| f.get("action"))
        .and_then(|a| a.get("PLpgSQL_stmt_block"))
        .and_then(|b| b.get("body"))
        .and_then(Value::as_array);
    let last = body.and_then(|b| {
        b.iter()
            .rev()
            .find(|s| s.get("PLpgSQL_stmt_return").is_none())
    });
    last.is_some_and(|s| ENDS_TRANSACTION.iter().any(|k| s.get(*k).is_some()))
}

/// True for a name in the proxy's reserved space, in any letter case.
pub(super) fn reserved_name(name: &str) -> bool {
    let prefix = crate::protocol::RESERVED_PREFIX;
    name.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// The first relation under `v` (any depth) for which `listed` is true.
pub(super) fn names_relation<'v>(v: &'v Value, listed: &dyn Fn(&str) -> bool) -> Option<&'v str> {
    match v {
        Value::Object(o) => {
            let here = o.get("relname").and_then(Value::as_str);
            if let Some(rel) = here.filter(|r| listed(r)) {
                return Some(rel);
            }
            o.values().find_map(|c| names_relation(c, listed))
        }
        Value::Array(a) => a.iter().find_map(|c| names_relation(c, listed)),
        _ => None,
    }
}
