//! Names the parser path refuses wherever the tree holds them: relations (other sessions'
//! activity; views whose writes change settings) and functions named without a call.

use serde_json::Value;

use super::{Stop, refuse};
use crate::policy::knowledge::{self, Func};

/// Refuses a relation the table names (`write`: as the target of a write).
pub(super) fn relation(rel: &str, write: bool) -> Result<(), Stop> {
    let listed = knowledge::RELATIONS.iter().find(|(n, _)| *n == rel);
    match listed {
        Some((n, false)) => refuse(format!("{n} (reaches other tenants' sessions)")),
        Some((n, true)) if write => refuse(*n),
        _ => Ok(()),
    }
}

/// Refuses a function named without a call when calling it later would be refused now.
pub(super) fn named_function(name: &str) -> Result<(), Stop> {
    match knowledge::function(name) {
        None | Some(Func::SessionState) => Ok(()),
        Some(_) => refuse(format!("{name} named as a function")),
    }
}

/// Calls `f` on every `String` node under `v`.
pub(super) fn names_in(v: &Value, f: &mut dyn FnMut(&str) -> Result<(), Stop>) -> Result<(), Stop> {
    if let Some(s) = v
        .get("String")
        .and_then(|s| s.get("sval"))
        .and_then(Value::as_str)
    {
        f(s)?;
    }
    match v {
        Value::Object(o) => o.values().try_for_each(|c| names_in(c, f)),
        Value::Array(a) => a.iter().try_for_each(|c| names_in(c, f)),
        _ => Ok(()),
    }
}
