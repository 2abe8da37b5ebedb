//! The parser path: PostgreSQL's own grammar (libpg_query, through `pg_query`) reads the
//! text, and the verdict follows from the tree and the tables in `knowledge.rs`: every
//! statement kind must be on the allow-list, and the whole tree is walked for function
//! calls, relations, settings and bodies (SQL bodies and DO / PL/pgSQL bodies are parsed and
//! checked by the same rules). The tree is walked as generic JSON (serde of the parse
//! result), so no node kind can be skipped because the walk did not know it.

use serde_json::Value;

mod names;
pub mod position;
mod readings;
mod tree;
use names::{named_function, names_in, relation};
use tree::{
    body_options, collect_exprs, constant, ends_with_transaction_control, expression, is_kind,
    last_name, name_in_text, node, parse_mode, record_with_default, reserved_name, tagged,
    transaction_control, trigger_wrap, typed_kind, wrap_do,
};

use super::GuardViolation;
use super::knowledge::{self, Func, Kind};
use super::sql::unreadable;
use crate::protocol::sqlstate;

/// Texts nested deeper than this (a query in a body in a string ...) are refused.
const MAX_DEPTH: usize = 4;

/// Where a text runs: the client's own statement (or a DO block or runner, which run now,
/// in view of the session), or a function body, which runs later, whenever it is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Now,
    DoBody,
    FunctionBody,
}

/// The parser's verdict on a whole text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Nothing refused.
    Allowed,
    /// PostgreSQL's grammar does not accept the text: the parser's message, and where in
    /// the text it stopped as PostgreSQL reports it (see [`position`]).
    SyntaxError(String, Option<u32>),
    /// Refused by the policy.
    Refused(GuardViolation),
}

/// Checks `sql` with PostgreSQL's parser against the `protected` settings, in every reading
/// PostgreSQL could give it (see [`readings`]): refused if any reading is refused. A text
/// another reading cannot parse is judged by the readings that can.
pub fn check(sql: &[u8], protected: &[String]) -> Parsed {
    let verdict = check_reading(sql, protected);
    if verdict != Parsed::Allowed {
        return verdict;
    }
    match readings::refused_in_another(sql, &|text| check_reading(text, protected)) {
        Some(v) => Parsed::Refused(v),
        None => verdict,
    }
}

/// [`check`] in the guard's own reading (UTF-8, standard strings).
fn check_reading(sql: &[u8], protected: &[String]) -> Parsed {
    let text = String::from_utf8_lossy(sql);
    let mut c = Checker {
        protected,
        widenable: Vec::new(),
    };
    match c.text(&text, Scope::Now, 0) {
        Err(Stop::Syntax(m)) => {
            let at = position::of(&text, &m);
            Parsed::SyntaxError(m, at)
        }
        Err(Stop::Refused(v)) => Parsed::Refused(v),
        Ok(()) if c.widenable.is_empty() => Parsed::Allowed,
        Ok(()) => {
            let kinds = c.widenable.join(", ");
            let (code, why) = match knowledge::statement(&c.widenable[0]) {
                Kind::Refuse(code, why) => (code, why),
                Kind::Allow => (sqlstate::FEATURE_NOT_SUPPORTED, ""),
            };
            Parsed::Refused(GuardViolation {
                setting: format!(
                    "{why} [statement kind {kinds}; a database's guard_allow can allow it]"
                ),
                code,
                widenable: c.widenable,
                position: None,
            })
        }
    }
}

enum Stop {
    Syntax(String),
    Refused(GuardViolation),
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Refused(GuardViolation::new(why.into())))
}

struct Checker<'p> {
    protected: &'p [String],
    /// Statement kinds refused only by the allow-list (a database may widen it).
    widenable: Vec<String>,
}

impl Checker<'_> {
    fn protected(&self, name: &str) -> bool {
        self.protected.iter().any(|p| p.eq_ignore_ascii_case(name))
    }

    /// Parses and checks one text run in `scope`, `depth` texts deep.
    fn text(&mut self, sql: &str, scope: Scope, depth: usize) -> Result<(), Stop> {
        self.text_in(sql, 0, scope, depth)
    }

    /// [`Self::text`] for a text parsed in `mode` (see [`parse_mode`]).
    fn text_in(&mut self, sql: &str, mode: i64, scope: Scope, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return refuse("SQL nested too deep to verify");
        }
        let parsed = parse_mode(sql, mode).map_err(tree::stop_of)?;
        let tree = serde_json::to_value(&parsed.protobuf)
            .map_err(|e| Stop::Syntax(format!("unreadable parse tree: {e}")))?;
        for raw in tree
            .get("stmts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(stmt) = raw.get("stmt") else {
                continue;
            };
            let Some((kind, body)) = node(stmt) else {
                continue;
            };
            if let Kind::Refuse(..) = knowledge::statement(kind)
                && !(kind == "LockStmt" && knowledge::weak_lock(body))
            {
                self.widenable.push(kind.to_string());
            }
            if kind == "TransactionStmt" && knowledge::two_phase(body) {
                self.widenable.push(knowledge::TWO_PHASE.to_string());
            }
            let start = raw
                .get("stmt_location")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize;
            let len = raw.get("stmt_len").and_then(Value::as_u64).unwrap_or(0) as usize;
            let own = match len {
                0 => sql.get(start..),
                n => sql.get(start..start + n),
            }
            .unwrap_or(sql);
            self.walk(kind, body, own, scope, depth)?;
        }
        Ok(())
    }

    /// Walks every node under `v` (whose kind is `kind`), checking what the tables name.
    fn walk(
        &mut self,
        kind: &str,
        v: &Value,
        stmt_text: &str,
        scope: Scope,
        depth: usize,
    ) -> Result<(), Stop> {
        self.node(kind, v, stmt_text, scope, depth)?;
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    if kind == "CreateFunctionStmt" && (k == "sql_body") {
                        self.children(child, stmt_text, Scope::FunctionBody, depth)?;
                    } else if let Some((ck, cv)) = tagged(child).filter(|_| is_kind(k)) {
                        self.walk(ck, cv, stmt_text, scope, depth)?;
                    } else {
                        self.walk(
                            typed_kind(child).unwrap_or(k),
                            child,
                            stmt_text,
                            scope,
                            depth,
                        )?;
                    }
                }
            }
            Value::Array(a) => {
                for child in a {
                    self.walk(kind, child, stmt_text, scope, depth)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn children(&mut self, v: &Value, t: &str, scope: Scope, depth: usize) -> Result<(), Stop> {
        self.walk("", v, t, scope, depth)
    }

    /// The checks for one node of kind `kind`.
    fn node(
        &mut self,
        kind: &str,
        v: &Value,
        stmt_text: &str,
        scope: Scope,
        depth: usize,
    ) -> Result<(), Stop> {
        match kind {
            "FuncCall" => self.call(v, scope, depth),
            "RangeVar" => {
                let rel = v.get("relname").and_then(Value::as_str).unwrap_or("");
                let temp = v.get("relpersistence").and_then(Value::as_str) == Some("t");
                if temp && scope == Scope::FunctionBody {
                    return refuse("a temporary object created inside a function body");
                }
                relation(rel, false)
            }
            // A view or rule over a view whose writes change settings makes it writable
            // under another name (an UPDATE of the view fires pg_settings' rule).
            "ViewStmt" | "RuleStmt" => match tree::names_relation(v, &knowledge::write_guarded) {
                Some(rel) => refuse(format!(
                    "a view or rule over {rel} (writes through it would change settings)"
                )),
                None => Ok(()),
            },
            // `(x).f` and `t.f` may call `f(x)`, `f(t)` (PostgreSQL's attribute notation
            // for a one-argument function): a refused function named there is refused.
            "AIndirection" => names_in(v.get("indirection").unwrap_or(&Value::Null), &mut |s| {
                named_function(s)
            }),
            "ColumnRef" => match v.get("fields").and_then(Value::as_array) {
                Some(f) if f.len() > 1 => names_in(&f[f.len() - 1], &mut |s| named_function(s)),
                _ => Ok(()),
            },
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                let rel = v.get("relation").and_then(|r| r.get("relname"));
                relation(rel.and_then(Value::as_str).unwrap_or(""), true)
            }
            "TypeCast" => {
                let ty = v.get("type_name").and_then(|t| t.get("names"));
                let ty = ty.and_then(last_name).unwrap_or("");
                let Some(arg) = v.get("arg") else {
                    return Ok(());
                };
                match (ty, constant(arg)) {
                    ("regproc" | "regprocedure", Ok(s)) => named_function(&name_in_text(&s)),
                    ("regclass", Ok(s)) => relation(&name_in_text(&s), false),
                    _ => Ok(()),
                }
            }
            "DefineStmt" | "CreateCastStmt" | "AlterOperatorStmt" | "CreateOpClassStmt" => {
                names_in(v, &mut |s| named_function(s))
            }
            "VariableSetStmt" => self.set(v, scope),
            // The proxy's own statements (the context's set_config among them) are prepared
            // on every backend under this prefix: SQL must not run, replace or drop them.
            "ExecuteStmt" | "PrepareStmt" | "DeallocateStmt"
                if v.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(reserved_name) =>
            {
                refuse(format!(
                    "prepared statement names starting with \"{}\" are reserved",
                    crate::protocol::RESERVED_PREFIX
                ))
            }
            "DiscardStmt" | "DeallocateStmt" | "PrepareStmt" | "LoadStmt"
                if scope != Scope::Now =>
            {
                refuse(format!(
                    "{kind} inside a body (it changes the session where the proxy cannot see it)"
                ))
            }
            "ListenStmt" if scope == Scope::FunctionBody => refuse("LISTEN inside a function body"),
            "DoStmt" => {
                let (lang, body) = body_options(v.get("args"));
                let lang = lang.unwrap_or_else(|| "plpgsql".into());
                let body = body.unwrap_or_default();
                let scope = if scope == Scope::FunctionBody {
                    scope
                } else {
                    Scope::DoBody
                };
                let wrapped = wrap_do(&body);
                self.body(&lang, &body, &wrapped, scope, depth)
            }
            "CreateFunctionStmt" => {
                let (lang, body) = body_options(v.get("options"));
                let has_sql_body = v.get("sql_body").is_some_and(|b| !b.is_null());
                match (lang, body) {
                    (_, None) if has_sql_body => Ok(()),
                    (lang, Some(body)) => {
                        let lang = lang.unwrap_or_else(|| "sql".into());
                        // PL/pgSQL's parser knows NEW, OLD and TG_* only in a wrapper.
                        let returns = v.get("return_type").and_then(|t| t.get("names"));
                        let whole = match returns.and_then(last_name) {
                            Some("trigger" | "event_trigger") => trigger_wrap(&body),
                            _ => stmt_text.to_string(),
                        };
                        self.body(&lang, &body, &whole, Scope::FunctionBody, depth)
                    }
                    (_, None) => refuse("a function without a body the guard can read"),
                }
            }
            _ => Ok(()),
        }
    }

    /// Checks a body in `lang`; `whole` is a CREATE FUNCTION text for the PL/pgSQL parser.
    fn body(
        &mut self,
        lang: &str,
        body: &str,
        whole: &str,
        scope: Scope,
        depth: usize,
    ) -> Result<(), Stop> {
        match lang {
            "sql" => self.text(body, scope, depth + 1),
            "plpgsql" => self.plpgsql(whole, body, scope, depth + 1),
            _ => refuse("a function language other than sql or plpgsql"),
        }
    }

    /// Checks a PL/pgSQL function (a whole CREATE FUNCTION text): every SQL statement and
    /// expression in it, and EXECUTE only of a constant string.
    fn plpgsql(&mut self, whole: &str, body: &str, scope: Scope, depth: usize) -> Result<(), Stop> {
        if depth > MAX_DEPTH {
            return refuse("SQL nested too deep to verify");
        }
        let tree = match pg_query::parse_plpgsql(whole) {
            Ok(t) => t,
            Err(e) => {
                return refuse(format!("a PL/pgSQL body the guard could not read ({e})"));
            }
        };
        if let Some(name) = record_with_default(&tree, body) {
            return refuse(format!(
                "a default value of record variable {name:?}, which the guard cannot read"
            ));
        }
        // The context lives as long as the client's transaction: after a COMMIT or
        // ROLLBACK inside a DO block or procedure, the rest of it would run without one.
        // One as the body's last statement leaves nothing behind it.
        if transaction_control(&tree) > usize::from(ends_with_transaction_control(&tree)) {
            return refuse(
                "COMMIT, ROLLBACK or CALL inside a DO block or procedure with statements after it (they would run without the tenant context)",
            );
        }
        let mut exprs = Vec::new();
        collect_exprs(&tree, false, &mut exprs);
        for (query, mode, dynamic) in exprs {
            if !dynamic {
                match self.text_in(&query, mode, scope, depth) {
                    Err(Stop::Syntax(_)) => {
                        return refuse("a PL/pgSQL expression the guard could not read");
                    }
                    other => other?,
                }
                continue;
            }
            match expression(&query).map(|e| constant(&e)) {
                Some(Ok(text)) => self.text(&text, scope, depth + 1)?,
                _ => return refuse("dynamic SQL in a function body"),
            }
        }
        Ok(())
    }

    /// Checks a function call against the function table.
    fn call(&mut self, v: &Value, scope: Scope, depth: usize) -> Result<(), Stop> {
        let Some(name) = v.get("funcname").and_then(last_name) else {
            return Ok(());
        };
        let Some(f) = knowledge::function(name) else {
            return Ok(());
        };
        let args: Vec<&Value> = v
            .get("args")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        match f {
            Func::SetsSetting => {
                let Some(Ok(setting)) = args.first().map(|a| constant(a)) else {
                    return refuse("set_config(<non-literal name>)");
                };
                if knowledge::LEXING_SETTINGS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&setting))
                {
                    let Some(Ok(value)) = args.get(1).map(|a| constant(a)) else {
                        return refuse(
                            "set_config(<encoding or string setting>, <non-literal value>)",
                        );
                    };
                    if let Some(why) =
                        unreadable(setting.to_ascii_lowercase().as_bytes(), value.as_bytes())
                    {
                        return refuse(why);
                    }
                }
                if self.protected(&setting) {
                    return Err(Stop::Refused(GuardViolation::new(
                        setting.to_ascii_lowercase(),
                    )));
                }
                Ok(())
            }
            Func::RunsText(positions, count) => {
                if count.is_some_and(|c| c != args.len()) {
                    return Ok(());
                }
                for &p in positions {
                    match args.get(p).map(|a| constant(a)) {
                        Some(Ok(q)) => self.text(&q, scope, depth + 1)?,
                        Some(Err(true)) | None => {}
                        Some(Err(false)) => return refuse(format!("{name}(<non-literal query>)")),
                    }
                }
                Ok(())
            }
            Func::ReadsRelation => match args.first().map(|a| constant(a)) {
                Some(Ok(rel)) => relation(&name_in_text(&rel), false),
                _ => refuse(format!("{name}(<non-literal query>)")),
            },
            Func::SessionState if scope == Scope::FunctionBody => refuse(format!(
                "{name} inside a function body (session state the proxy cannot see)"
            )),
            Func::SessionState => Ok(()),
            Func::Refused(why) => refuse(format!("{name} ({why})")),
        }
    }

    /// Checks SET / RESET (any form: statement, function SET clause, ALTER ... SET).
    fn set(&mut self, v: &Value, scope: Scope) -> Result<(), Stop> {
        let kind = v.get("kind").and_then(Value::as_i64).unwrap_or(0);
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        const VALUE: i64 = 1;
        const MULTI: i64 = 4;
        const RESET_ALL: i64 = 6;
        if kind == RESET_ALL && scope != Scope::Now {
            return refuse(
                "RESET ALL inside a DO block or function body (it clears the tenant context where the proxy cannot see it)",
            );
        }
        if kind == RESET_ALL || kind == MULTI {
            return Ok(());
        }
        if self.protected(&name) {
            return Err(Stop::Refused(GuardViolation::new(name)));
        }
        if kind == VALUE && knowledge::LEXING_SETTINGS.contains(&name.as_str()) {
            let first = v
                .get("args")
                .and_then(Value::as_array)
                .and_then(|a| a.first());
            let value = match first.map(constant) {
                Some(Ok(s)) => s,
                Some(Err(true)) => first
                    .and_then(|f| node(f))
                    .and_then(|(_, c)| c.get("val"))
                    .and_then(tagged)
                    .and_then(|(_, n)| n.as_object()?.values().next().cloned())
                    .map(|n| n.to_string().trim_matches('"').to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            if let Some(why) = unreadable(name.as_bytes(), value.as_bytes()) {
                return refuse(why);
            }
        }
        let local = v.get("is_local").and_then(Value::as_bool).unwrap_or(false);
        if scope == Scope::FunctionBody && !local {
            return refuse(format!(
                "SET/RESET {name} inside a function body (the setting would outlive the call where the proxy cannot see it)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
