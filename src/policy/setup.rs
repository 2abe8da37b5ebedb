//! Where a simple-query text's transaction setup ends. A text such as `BEGIN ISOLATION
//! LEVEL SERIALIZABLE; SELECT ...` (what psql -c, ActiveRecord and many ORMs send) sets the
//! transaction up and then reads; the tenant context must go in between (it takes the
//! snapshot, after which PostgreSQL refuses an isolation level), so the session sends the
//! text as two Query messages split where PostgreSQL's own parser says the setup ends.
//!
//! Setup statements: `BEGIN` / `START TRANSACTION` with or without modes, `SET TRANSACTION
//! ...` (modes or `SNAPSHOT`), `SET SESSION CHARACTERISTICS AS TRANSACTION ...`: none takes
//! a snapshot or reads a row. A split is only worth it (and only offered) when the setup
//! sets the current transaction's modes: a prefix of plain BEGINs lets the context go in
//! front of the whole text, in one message.

use pg_query::NodeEnum;
use pg_query::protobuf::{RawStmt, TransactionStmtKind};

/// A text split after its setup prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupSplit {
    /// Bytes `..head` are the setup statements (without the `;` that ends the last one).
    pub head: usize,
    /// Bytes `rest..` are the statements after it.
    pub rest: usize,
    /// The first statement opens a transaction block (BEGIN or START TRANSACTION): the
    /// statements after the setup run inside that block whether sent in one message or two.
    pub opens_block: bool,
}

/// What one top-level statement is to the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// BEGIN or START TRANSACTION without modes.
    PlainBegin,
    /// BEGIN or START TRANSACTION with modes.
    BeginWithModes,
    /// SET TRANSACTION ... (modes or snapshot) for the current transaction.
    SetTransaction,
    /// SET SESSION CHARACTERISTICS AS TRANSACTION ...: takes no snapshot.
    SessionCharacteristics,
    /// Anything else: it may read, so the context must be in place first.
    Other,
}

fn role(stmt: &RawStmt) -> Role {
    match stmt.stmt.as_ref().and_then(|n| n.node.as_ref()) {
        Some(NodeEnum::TransactionStmt(t)) => {
            let begin = [
                TransactionStmtKind::TransStmtBegin as i32,
                TransactionStmtKind::TransStmtStart as i32,
            ];
            match (begin.contains(&t.kind), t.options.is_empty()) {
                (true, true) => Role::PlainBegin,
                (true, false) => Role::BeginWithModes,
                _ => Role::Other,
            }
        }
        Some(NodeEnum::VariableSetStmt(v)) => match v.name.as_str() {
            "TRANSACTION" | "TRANSACTION SNAPSHOT" => Role::SetTransaction,
            "SESSION CHARACTERISTICS" => Role::SessionCharacteristics,
            _ => Role::Other,
        },
        _ => Role::Other,
    }
}

/// Where to split `sql`: after its longest prefix of setup statements, when that prefix sets
/// the current transaction's modes and at least one statement follows it. None when the text
/// does not parse (PostgreSQL then reports the syntax error for the whole text, running
/// nothing), is not UTF-8, or has nothing to split.
pub fn split(sql: &[u8]) -> Option<SetupSplit> {
    let text = std::str::from_utf8(sql).ok()?;
    let parsed = pg_query::parse(text, pg_query::ParserOptions::DEFAULT).ok()?;
    let stmts = &parsed.protobuf.stmts;
    let roles: Vec<Role> = stmts.iter().map(role).collect();
    let setup = roles.iter().take_while(|r| **r != Role::Other).count();
    if setup == 0 || setup == stmts.len() {
        return None;
    }
    let modes = roles[..setup]
        .iter()
        .any(|r| matches!(r, Role::BeginWithModes | Role::SetTransaction));
    if !modes {
        return None;
    }
    let last = &stmts[setup - 1];
    let head = usize::try_from(last.stmt_location + last.stmt_len).ok()?;
    // The statement ends at its `;` (PostgreSQL's grammar records that length).
    if last.stmt_len <= 0 || sql.get(head) != Some(&b';') {
        return None;
    }
    Some(SetupSplit {
        head,
        rest: head + 1,
        opens_block: matches!(roles[0], Role::PlainBegin | Role::BeginWithModes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(sql: &str) -> Option<(&str, &str, bool)> {
        split(sql.as_bytes()).map(|s| (&sql[..s.head], &sql[s.rest..], s.opens_block))
    }

    #[test]
    fn splits_after_the_setup_prefix() {
        assert_eq!(
            parts("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT"),
            Some((
                "BEGIN ISOLATION LEVEL SERIALIZABLE",
                " SELECT 1; COMMIT",
                true
            ))
        );
        assert_eq!(
            parts("/* c */ begin; set transaction isolation level repeatable read ;select 1"),
            Some((
                "/* c */ begin; set transaction isolation level repeatable read ",
                "select 1",
                true
            ))
        );
        assert_eq!(
            parts(
                "START TRANSACTION READ ONLY, DEFERRABLE; SET TRANSACTION SNAPSHOT 'x'; SELECT ';'"
            ),
            Some((
                "START TRANSACTION READ ONLY, DEFERRABLE; SET TRANSACTION SNAPSHOT 'x'",
                " SELECT ';'",
                true
            ))
        );
        assert_eq!(
            parts("SET TRANSACTION READ ONLY; SELECT 1"),
            Some(("SET TRANSACTION READ ONLY", " SELECT 1", false))
        );
    }

    #[test]
    fn leaves_everything_else_whole() {
        for sql in [
            "BEGIN; SELECT 1; COMMIT",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "BEGIN ISOLATION LEVEL SERIALIZABLE;",
            "BEGIN ISOLATION LEVEL SERIALIZABLE; -- nothing else",
            "SELECT 1; BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1",
            "BEGIN ISOLATION LEVEL BOGUS; SELECT 1",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SELECT 1",
            "BEGIN; SET search_path = x; SET TRANSACTION READ ONLY; SELECT 1",
            "",
        ] {
            assert_eq!(split(sql.as_bytes()), None, "{sql}");
        }
        assert_eq!(split(b"BEGIN READ ONLY; SELECT '\xff'"), None);
    }
}
