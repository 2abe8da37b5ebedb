//! THE one table of what the guard knows: statement kinds and their verdicts, functions that
//! run text as SQL or reach other sessions, relations that show other sessions, settings
//! that change how text is read. The parser path (`parsed.rs`) decides from these tables,
//! and the fast path's needles (`fast.rs`) are derived from them (the tests check that every
//! name here is caught by a needle), so the two cannot drift apart.

use crate::protocol::sqlstate;

/// What the guard does with one statement kind (PostgreSQL's parse node name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PostgreSQL's privileges govern its effect; the tree is still walked for calls.
    Allow,
    /// No privilege can stop it on a role every tenant shares: refused with this SQLSTATE
    /// and reason, unless the database's `guard_allow` lists the kind.
    Refuse(&'static str, &'static str),
}

const PRIV: &str = sqlstate::INSUFFICIENT_PRIVILEGE;
const UNSUPPORTED: &str = sqlstate::FEATURE_NOT_SUPPORTED;

/// The strongest LOCK TABLE mode that passes without widening: ROW EXCLUSIVE (PostgreSQL's
/// `RowExclusiveLock`, 3), which every INSERT, UPDATE and DELETE takes anyway. Stronger
/// modes (SHARE UPDATE EXCLUSIVE and up, the default ACCESS EXCLUSIVE among them) block
/// other tenants' writes or reads of a shared table for as long as the transaction lasts.
pub const WEAKEST_REFUSED_LOCK: i64 = 4;

/// True for a `LockStmt` whose mode other tenants' statements never wait for.
pub fn weak_lock(lock_stmt: &serde_json::Value) -> bool {
    lock_stmt
        .get("mode")
        .and_then(serde_json::Value::as_i64)
        .is_some_and(|m| m < WEAKEST_REFUSED_LOCK)
}

/// The kind two-phase commit is refused as (a `TransactionStmt` that prepares a transaction
/// or finishes a prepared one), which `guard_allow` may list.
pub const TWO_PHASE: &str = "TwoPhaseCommit";

/// True for a `TransactionStmt` of two-phase commit: `PREPARE TRANSACTION`, `COMMIT
/// PREPARED`, `ROLLBACK PREPARED`. Every tenant shares the role, and PostgreSQL lets the
/// role that prepared a transaction finish it from any session: any tenant could commit or
/// roll back another's (its global id is listed in `pg_prepared_xacts`).
pub fn two_phase(transaction_stmt: &serde_json::Value) -> bool {
    use pg_query::protobuf::TransactionStmtKind as K;
    let kind = transaction_stmt
        .get("kind")
        .and_then(serde_json::Value::as_i64);
    [
        K::TransStmtPrepare,
        K::TransStmtCommitPrepared,
        K::TransStmtRollbackPrepared,
    ]
    .iter()
    .any(|k| kind == Some(*k as i64))
}

/// Statement kinds by their parse-node name. A kind not listed is refused with 0A000.
pub const STATEMENTS: &[(&str, Kind)] = &[
    (
        TWO_PHASE,
        Kind::Refuse(
            PRIV,
            "two-phase commit (PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED): every tenant shares the role, so any tenant could finish another's prepared transaction",
        ),
    ),
    ("SelectStmt", Kind::Allow),
    // A PL/pgSQL assignment (only from the PL/pgSQL parse modes).
    ("PlassignStmt", Kind::Allow),
    ("InsertStmt", Kind::Allow),
    ("UpdateStmt", Kind::Allow),
    ("DeleteStmt", Kind::Allow),
    ("MergeStmt", Kind::Allow),
    ("TransactionStmt", Kind::Allow),
    ("VariableSetStmt", Kind::Allow),
    ("VariableShowStmt", Kind::Allow),
    ("ExplainStmt", Kind::Allow),
    ("CopyStmt", Kind::Allow),
    ("CallStmt", Kind::Allow),
    ("DoStmt", Kind::Allow),
    ("PrepareStmt", Kind::Allow),
    ("ExecuteStmt", Kind::Allow),
    ("DeallocateStmt", Kind::Allow),
    ("DeclareCursorStmt", Kind::Allow),
    ("FetchStmt", Kind::Allow),
    ("ClosePortalStmt", Kind::Allow),
    ("ListenStmt", Kind::Allow),
    ("UnlistenStmt", Kind::Allow),
    ("NotifyStmt", Kind::Allow),
    // Only in a mode stronger than ROW EXCLUSIVE (what writes take anyway): see
    // [`weak_lock`].
    (
        "LockStmt",
        Kind::Refuse(
            PRIV,
            "LOCK TABLE in a mode stronger than ROW EXCLUSIVE (it holds a table every tenant shares: their reads or writes wait)",
        ),
    ),
    ("DiscardStmt", Kind::Allow),
    ("ConstraintsSetStmt", Kind::Allow),
    ("CheckPointStmt", Kind::Allow),
    ("VacuumStmt", Kind::Allow),
    ("ClusterStmt", Kind::Allow),
    ("ReindexStmt", Kind::Allow),
    ("CreateStmt", Kind::Allow),
    ("CreateTableAsStmt", Kind::Allow),
    ("ViewStmt", Kind::Allow),
    ("IndexStmt", Kind::Allow),
    ("AlterTableStmt", Kind::Allow),
    ("DropStmt", Kind::Allow),
    ("TruncateStmt", Kind::Allow),
    ("CommentStmt", Kind::Allow),
    ("GrantStmt", Kind::Allow),
    ("GrantRoleStmt", Kind::Allow),
    ("AlterDefaultPrivilegesStmt", Kind::Allow),
    ("CreateSchemaStmt", Kind::Allow),
    ("CreateSeqStmt", Kind::Allow),
    ("AlterSeqStmt", Kind::Allow),
    ("CreateEnumStmt", Kind::Allow),
    ("AlterEnumStmt", Kind::Allow),
    ("CompositeTypeStmt", Kind::Allow),
    ("CreateRangeStmt", Kind::Allow),
    ("CreateDomainStmt", Kind::Allow),
    ("AlterDomainStmt", Kind::Allow),
    ("DefineStmt", Kind::Allow),
    ("RenameStmt", Kind::Allow),
    ("AlterObjectSchemaStmt", Kind::Allow),
    ("AlterOwnerStmt", Kind::Allow),
    ("CreateFunctionStmt", Kind::Allow),
    ("AlterFunctionStmt", Kind::Allow),
    ("CreateTrigStmt", Kind::Allow),
    ("RuleStmt", Kind::Allow),
    ("CreatePolicyStmt", Kind::Allow),
    ("AlterPolicyStmt", Kind::Allow),
    ("CreateExtensionStmt", Kind::Allow),
    ("AlterExtensionStmt", Kind::Allow),
    ("CreateCastStmt", Kind::Allow),
    ("CreateStatsStmt", Kind::Allow),
    ("RefreshMatViewStmt", Kind::Allow),
    ("CreatedbStmt", Kind::Allow),
    ("DropdbStmt", Kind::Allow),
    ("CreateRoleStmt", Kind::Allow),
    ("DropRoleStmt", Kind::Allow),
    ("DropOwnedStmt", Kind::Allow),
    ("ReassignOwnedStmt", Kind::Allow),
    ("SecLabelStmt", Kind::Allow),
    ("AlterTypeStmt", Kind::Allow),
    ("AlterCollationStmt", Kind::Allow),
    ("AlterStatsStmt", Kind::Allow),
    ("AlterOperatorStmt", Kind::Allow),
    ("CreateOpClassStmt", Kind::Allow),
    ("CreateOpFamilyStmt", Kind::Allow),
    ("AlterOpFamilyStmt", Kind::Allow),
    ("AlterTsdictionaryStmt", Kind::Allow),
    ("AlterTsconfigurationStmt", Kind::Allow),
    ("AlterObjectDependsStmt", Kind::Allow),
    (
        "AlterRoleStmt",
        Kind::Refuse(
            PRIV,
            "ALTER ROLE/USER (every tenant shares the role: a password or attribute change reaches them all)",
        ),
    ),
    (
        "AlterRoleSetStmt",
        Kind::Refuse(
            PRIV,
            "ALTER ROLE/USER ... SET (a per-role default reaches every tenant's next connection)",
        ),
    ),
    (
        "AlterDatabaseStmt",
        Kind::Refuse(PRIV, "ALTER DATABASE (shared by every tenant)"),
    ),
    (
        "AlterDatabaseSetStmt",
        Kind::Refuse(
            PRIV,
            "ALTER DATABASE ... SET (a per-database default reaches every tenant's next connection)",
        ),
    ),
    (
        "AlterSystemStmt",
        Kind::Refuse(PRIV, "ALTER SYSTEM (server-wide settings)"),
    ),
    (
        "CreateConversionStmt",
        Kind::Refuse(PRIV, "CREATE CONVERSION (changes how client text is read)"),
    ),
    (
        "LoadStmt",
        Kind::Refuse(
            UNSUPPORTED,
            "LOAD (a loaded library stays in the backend; no cleanup can remove it)",
        ),
    ),
];

/// What a function does that the guard cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    /// Changes the setting its first argument names (`set_config`).
    SetsSetting,
    /// Runs its text arguments at these positions as SQL (`None`: any argument count,
    /// `Some(n)`: only the n-argument form).
    RunsText(&'static [usize], Option<usize>),
    /// Reads the relation its first argument names at run time (`table_to_xml`).
    ReadsRelation,
    /// Leaves session state that release cleanup (DISCARD ALL) removes: allowed in client
    /// SQL (the session is marked dirty), refused inside function bodies, whose later calls
    /// the proxy never sees.
    SessionState,
    /// Refused wherever it is named, for this reason.
    Refused(&'static str),
}

const OTHER_SESSIONS: &str = "reaches other tenants' sessions";
const SERVER_FILES: &str = "reads or writes the server's files";
const OTHER_CONNECTIONS: &str = "runs SQL on another connection the guard cannot read";
const UNCLEANABLE: &str = "seeds random() for every later user of the connection, and no cleanup (not even DISCARD ALL) undoes it";

/// Functions by name (unquoted names compare case-insensitively, quoted exactly; the
/// schema, if any, is ignored: `pg_catalog.set_config` is `set_config`).
pub const FUNCTIONS: &[(&str, Func)] = &[
    ("set_config", Func::SetsSetting),
    ("query_to_xml", Func::RunsText(&[0], None)),
    ("query_to_xmlschema", Func::RunsText(&[0], None)),
    ("query_to_xml_and_xmlschema", Func::RunsText(&[0], None)),
    ("ts_stat", Func::RunsText(&[0], None)),
    ("ts_rewrite", Func::RunsText(&[1], Some(2))),
    ("crosstab", Func::RunsText(&[0, 1], None)),
    ("crosstab2", Func::RunsText(&[0], None)),
    ("crosstab3", Func::RunsText(&[0], None)),
    ("crosstab4", Func::RunsText(&[0], None)),
    ("connectby", Func::RunsText(&[0, 1, 2, 3, 4, 5, 6], None)),
    ("table_to_xml", Func::ReadsRelation),
    ("table_to_xmlschema", Func::ReadsRelation),
    ("table_to_xml_and_xmlschema", Func::ReadsRelation),
    ("pg_advisory_lock", Func::SessionState),
    ("pg_advisory_lock_shared", Func::SessionState),
    ("pg_try_advisory_lock", Func::SessionState),
    ("pg_try_advisory_lock_shared", Func::SessionState),
    ("pg_terminate_backend", Func::Refused(OTHER_SESSIONS)),
    ("pg_cancel_backend", Func::Refused(OTHER_SESSIONS)),
    ("pg_stat_get_activity", Func::Refused(OTHER_SESSIONS)),
    (
        "pg_stat_get_backend_activity",
        Func::Refused(OTHER_SESSIONS),
    ),
    ("pg_prepared_statement", Func::Refused(OTHER_SESSIONS)),
    ("schema_to_xml", Func::Refused(OTHER_SESSIONS)),
    ("schema_to_xmlschema", Func::Refused(OTHER_SESSIONS)),
    ("schema_to_xml_and_xmlschema", Func::Refused(OTHER_SESSIONS)),
    ("database_to_xml", Func::Refused(OTHER_SESSIONS)),
    ("database_to_xmlschema", Func::Refused(OTHER_SESSIONS)),
    (
        "database_to_xml_and_xmlschema",
        Func::Refused(OTHER_SESSIONS),
    ),
    ("pg_read_file", Func::Refused(SERVER_FILES)),
    ("pg_read_binary_file", Func::Refused(SERVER_FILES)),
    ("pg_ls_dir", Func::Refused(SERVER_FILES)),
    ("pg_stat_file", Func::Refused(SERVER_FILES)),
    ("lo_import", Func::Refused(SERVER_FILES)),
    ("lo_export", Func::Refused(SERVER_FILES)),
    ("dblink", Func::Refused(OTHER_CONNECTIONS)),
    ("dblink_exec", Func::Refused(OTHER_CONNECTIONS)),
    ("dblink_connect", Func::Refused(OTHER_CONNECTIONS)),
    ("dblink_connect_u", Func::Refused(OTHER_CONNECTIONS)),
    ("dblink_send_query", Func::Refused(OTHER_CONNECTIONS)),
    ("dblink_open", Func::Refused(OTHER_CONNECTIONS)),
    ("setseed", Func::Refused(UNCLEANABLE)),
];

/// Relations that show other sessions' SQL, read anywhere; and views whose writes change
/// settings (refused as the target of INSERT, UPDATE, DELETE or MERGE).
pub const RELATIONS: &[(&str, bool)] = &[
    ("pg_stat_activity", false),
    ("pg_prepared_statements", false),
    ("pg_settings", true),
];

/// True when writes to relation `rel` change settings (from [`RELATIONS`]).
pub fn write_guarded(rel: &str) -> bool {
    RELATIONS.iter().any(|(n, writes)| *writes && *n == rel)
}

/// Settings that govern the server connection rather than the client's statements: the
/// connection is pgtenant's and outlives the client's transaction (it waits in the pool, then
/// serves others), so no client may set them (`idle_session_timeout` would have PostgreSQL
/// close a backend while it waits in the pool; pgtenant keeps its own timeouts and
/// keepalives).
pub const CONNECTION_SETTINGS: &[&str] = &[
    "idle_session_timeout",
    "tcp_keepalives_idle",
    "tcp_keepalives_interval",
    "tcp_keepalives_count",
    "tcp_user_timeout",
    "client_connection_check_interval",
];

/// Why a client may not change the protected setting `name` (lowercase), for its error.
pub fn protection_reason(name: &str) -> &'static str {
    if CONNECTION_SETTINGS.contains(&name) {
        "it governs the server connection, which pgtenant shares between clients"
    } else {
        "the tenant context is set by pgtenant"
    }
}

/// Settings that change how PostgreSQL reads SQL text (the values that would are refused on
/// every path; see `sql::readable`).
pub const LEXING_SETTINGS: &[&str] = &["client_encoding", "standard_conforming_strings"];

/// Languages whose bodies the guard reads.
pub const READABLE_LANGUAGES: &[&str] = &["sql", "plpgsql"];

/// First words of the statements the fast path may clear without the parser, and the kind
/// the parser gives each (the tests check each kind is `Allow`).
pub const FAST_FIRST_WORDS: &[(&str, &str)] = &[
    ("select", "SelectStmt"),
    ("insert", "InsertStmt"),
    ("update", "UpdateStmt"),
    ("delete", "DeleteStmt"),
    ("begin", "TransactionStmt"),
    ("commit", "TransactionStmt"),
    ("end", "TransactionStmt"),
    ("rollback", "TransactionStmt"),
    ("abort", "TransactionStmt"),
];

/// The verdict for statement kind `name`: listed kinds as listed, any other refused.
pub fn statement(name: &str) -> Kind {
    STATEMENTS.iter().find(|(n, _)| *n == name).map_or(
        Kind::Refuse(
            UNSUPPORTED,
            "a statement kind pgtenant's guard does not know",
        ),
        |(_, k)| *k,
    )
}

/// What the guard knows about function `name` (already case-folded as PostgreSQL does).
pub fn function(name: &str) -> Option<Func> {
    FUNCTIONS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Why `kind` cannot be in a database's `guard_allow`, if it cannot: it must be a statement
/// kind the allow-list refuses (a listed one, or a parse-node name `...Stmt` it does not
/// know). Protected settings, functions and relations are never widened.
pub fn widening_problem(kind: &str) -> Option<String> {
    let node_name = (kind.ends_with("Stmt") || kind == TWO_PHASE)
        && kind.starts_with(|c: char| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    match statement(kind) {
        Kind::Allow => Some(format!("{kind} is already allowed")),
        Kind::Refuse(..) if node_name => None,
        Kind::Refuse(..) => Some(format!(
            "{kind:?} is not a statement kind (PostgreSQL parse-node names such as AlterRoleStmt)"
        )),
    }
}
