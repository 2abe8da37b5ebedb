//! The doctor's checks, one entry each: adding a check is adding an entry to [`CHECKS`].
//!
//! Every query reads only pg_catalog (PostgreSQL 13-17) and names the app role through
//! `$ROLE`, so it runs the same through the app role or a DBA connection. Placeholders,
//! replaced by quoted literals before the query runs: `$ROLE` (the app role), `$COLUMN` (the
//! tenant column), `$SETTINGS` (the context settings, a text[]), `$SCHEMA` (the schema of
//! the verified readers), `$UNREADABLE_ENCODINGS` (the client encodings the guard cannot
//! read SQL in, a text[]). Column 0 of every row is the object the finding is about; the
//! fix SQL quotes identifiers with `format('%I')`, so it can be run as printed.

use super::{Params, Severity, quote_ident, quote_literal};

/// One posture check: what it looks for, and how a row of its query reads as a finding.
pub struct Check {
    /// Stable identifier (in the output and JSON; tests and CI match on it).
    pub id: &'static str,
    pub severity: Severity,
    /// One row per finding; column 0 is the object.
    pub query: &'static str,
    /// What is wrong, from the row.
    pub message: fn(&[String]) -> String,
    /// The exact SQL that removes the finding, from the row.
    pub fix: fn(&[String], &Params) -> String,
}

/// Every check the doctor runs, in output order.
pub static CHECKS: &[Check] = &[
    Check {
        id: "rls-not-forced",
        severity: Severity::Critical,
        query: concat!(
            "WITH ",
            tenant_tables!(),
            " SELECT tbl, col, privs, CASE WHEN NOT rls THEN 'off' ELSE 'enabled but not forced' END,
               concat_ws(chr(10),
                 CASE WHEN NOT rls THEN format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY;', tbl) END,
                 CASE WHEN NOT forced THEN format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', tbl) END)
             FROM tenant_tables WHERE privs <> '' AND NOT (rls AND forced) ORDER BY tbl"
        ),
        message: |r| {
            format!(
                "table {} has tenant column {} and the app role may {} it, but row level security is {}: \
                 its rows are not filtered by tenant{}",
                r[0],
                r[1],
                r[2],
                r[3],
                if r[3] == "off" { "" } else { " for the table owner" }
            )
        },
        fix: |r, _| r[4].clone(),
    },
    Check {
        id: "policy-without-check",
        severity: Severity::Warning,
        query: concat!(
            "WITH ",
            tenant_tables!(),
            ", ",
            role_policies!(),
            " SELECT format('%s policy %I', t.tbl, p.polname), CASE p.polcmd WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' ELSE 'ALL' END,
               CASE WHEN p.polcmd = 'a' OR p.qual IS NULL
                 THEN format('ALTER POLICY %I ON %s WITH CHECK (%s);', p.polname, t.tbl, ",
            verified_expr!(),
            ")
                 ELSE format('ALTER POLICY %I ON %s WITH CHECK (%s);', p.polname, t.tbl, p.qual) END,
               p.polcmd = 'a' OR p.qual IS NULL
             FROM tenant_tables t JOIN role_policies p ON p.polrelid = t.oid
             WHERE t.rls AND p.polcmd IN ('a', 'w', '*') AND p.chk IS NULL
               AND (t.privs LIKE '%INSERT%' OR t.privs LIKE '%UPDATE%') ORDER BY 1"
        ),
        message: |r| {
            if r[3] == "t" {
                format!(
                    "{} ({}) has no WITH CHECK and no USING to stand in for it: PostgreSQL refuses \
                     every row it alone would admit (fails closed, but the writes the grant allows break)",
                    r[0], r[1]
                )
            } else {
                format!(
                    "{} ({}) has no WITH CHECK: PostgreSQL checks new rows against its USING \
                     expression instead; state the check so a later USING change cannot loosen writes",
                    r[0], r[1]
                )
            }
        },
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "command-without-policy",
        severity: Severity::Warning,
        query: concat!(
            "WITH ",
            tenant_tables!(),
            ", ",
            role_policies!(),
            ", cmds(c, name) AS (VALUES ('r', 'SELECT'), ('a', 'INSERT'), ('w', 'UPDATE'), ('d', 'DELETE'))
             SELECT t.tbl, cmds.name,
               format('CREATE POLICY %I ON %s AS PERMISSIVE FOR %s TO %I %s;',
                 'tenant_isolation_' || lower(cmds.name), t.tbl, cmds.name, $ROLE,
                 CASE cmds.c WHEN 'a' THEN format('WITH CHECK (%s)', e.v)
                   WHEN 'w' THEN format('USING (%s) WITH CHECK (%s)', e.v, e.v)
                   ELSE format('USING (%s)', e.v) END)
             FROM tenant_tables t CROSS JOIN cmds
             CROSS JOIN LATERAL (SELECT ",
            verified_expr!(),
            " AS v) e
             WHERE t.rls AND position(cmds.name IN t.privs) > 0
               AND NOT EXISTS (SELECT 1 FROM role_policies p WHERE p.polrelid = t.oid
                               AND p.polpermissive AND p.polcmd IN (cmds.c, '*'))
             ORDER BY 1, 2"
        ),
        message: |r| {
            format!(
                "table {}: the app role may {} but no permissive policy for {} applies to it: \
                 PostgreSQL refuses every row (fails closed; the grant is unused or the application breaks)",
                r[0], r[1], r[1]
            )
        },
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "forgeable-context",
        severity: Severity::Critical,
        query: concat!(
            "WITH ",
            role_policies!(),
            ", found AS (
               SELECT p.*, format('%I.%I', n.nspname, c.relname) AS tbl,
                 (SELECT string_agg(s, ', ') FROM unnest($SETTINGS) s
                  WHERE position(format('current_setting(%L', s) IN
                                 coalesce(p.qual, '') || ' ' || coalesce(p.chk, '')) > 0) AS settings
               FROM role_policies p
               JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace)
             SELECT format('%s policy %I', tbl, polname), tbl, quote_ident(polname),
                    coalesce(qual, ''), coalesce(chk, ''), settings
             FROM found WHERE settings IS NOT NULL ORDER BY 1"
        ),
        message: |r| {
            format!(
                "{} reads {} with current_setting(), which any SQL on the shared role can set: \
                 isolation rests on pgtenant's SQL guard alone; read it through the verified readers",
                r[0], r[5]
            )
        },
        fix: |r, p| {
            let mut sql = format!("ALTER POLICY {} ON {}", r[2], r[1]);
            if !r[3].is_empty() {
                sql += &format!(" USING ({})", super::verified_reads(&r[3], p));
            }
            if !r[4].is_empty() {
                sql += &format!(" WITH CHECK ({})", super::verified_reads(&r[4], p));
            }
            sql + ";"
        },
    },
    Check {
        id: "policy-ignores-context",
        severity: Severity::Critical,
        query: concat!(
            "WITH ",
            tenant_tables!(),
            ", ",
            role_policies!(),
            ", found AS (SELECT t.*, p.polname, p.polcmd, coalesce(p.qual, '') || ' ' || coalesce(p.chk, '') AS exprs
               FROM tenant_tables t JOIN role_policies p ON p.polrelid = t.oid
               WHERE t.rls AND p.polpermissive AND (p.qual IS NOT NULL OR p.chk IS NOT NULL))
             SELECT format('%s policy %I', f.tbl, f.polname),
               CASE f.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                 WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
               format('ALTER POLICY %I ON %s%s%s;', f.polname, f.tbl,
                 CASE WHEN f.polcmd <> 'a' THEN format(' USING (%s)', e.v) ELSE '' END,
                 CASE WHEN f.polcmd IN ('a', 'w', '*') THEN format(' WITH CHECK (%s)', e.v) ELSE '' END)
             FROM found f CROSS JOIN LATERAL (SELECT ",
            verified_expr!(),
            " AS v FROM (SELECT f.col, f.typ) t) e
             WHERE position(format('%I.tenant_id()', $SCHEMA) IN f.exprs) = 0
               AND position(format('%I.setting(', $SCHEMA) IN f.exprs) = 0
               AND NOT EXISTS (SELECT 1 FROM unnest($SETTINGS) s
                               WHERE position(format('current_setting(%L', s) IN f.exprs) > 0)
             ORDER BY 1"
        ),
        message: |r| {
            format!(
                "{} ({}) is permissive and reads no tenant context: permissive policies are \
                 OR-ed, so it admits rows of every tenant (a context read inside a function of \
                 your own is not seen here)",
                r[0], r[1]
            )
        },
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "role-bypasses-rls",
        severity: Severity::Critical,
        query: "SELECT quote_ident(r.rolname), 'is SUPERUSER: row level security never applies to it',
                  format('ALTER ROLE %I NOSUPERUSER;', r.rolname)
                FROM pg_catalog.pg_roles r WHERE r.rolname = $ROLE AND r.rolsuper
                UNION ALL
                SELECT quote_ident(r.rolname), 'has BYPASSRLS: row level security never applies to it',
                  format('ALTER ROLE %I NOBYPASSRLS;', r.rolname)
                FROM pg_catalog.pg_roles r WHERE r.rolname = $ROLE AND r.rolbypassrls
                UNION ALL
                SELECT quote_ident(me.rolname),
                  format('is a member of %I, which has (or can SET ROLE to a role with) SUPERUSER or \
BYPASSRLS: one SET ROLE ends row level security for it', g.rolname),
                  format('REVOKE %I FROM %I;', g.rolname, me.rolname)
                FROM pg_catalog.pg_auth_members m
                JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
                JOIN pg_catalog.pg_roles me ON me.oid = m.member
                WHERE me.rolname = $ROLE AND EXISTS (SELECT 1 FROM pg_catalog.pg_roles b
                  WHERE (b.rolsuper OR b.rolbypassrls) AND pg_has_role(g.oid, b.oid, 'MEMBER'))",
        message: |r| format!("app role {} {}", r[0], r[1]),
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "owns-tenant-table",
        severity: Severity::Critical,
        query: concat!(
            "WITH ",
            tenant_tables!(),
            " SELECT t.tbl, quote_ident(pg_get_userbyid(t.relowner)),
               format('ALTER TABLE %s OWNER TO %I;', t.tbl, ",
            new_owner!(),
            ")
             FROM tenant_tables t WHERE pg_has_role($ROLE, t.relowner, 'MEMBER') AND ",
            not_super!(),
            " ORDER BY 1"
        ),
        message: |r| {
            format!(
                "the app role owns (or is a member of owner {}) tenant table {}: an owner can \
                 DISABLE or NO FORCE row level security and drop its policies",
                r[1], r[0]
            )
        },
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "rls-bypassing-privilege",
        severity: Severity::Critical,
        query: concat!(
            "WITH ",
            tenant_tables!(),
            ", risky AS (SELECT t.tbl, p.priv, c.relacl, c.relowner
               FROM tenant_tables t JOIN pg_catalog.pg_class c ON c.oid = t.oid
               CROSS JOIN (VALUES ('TRIGGER'), ('TRUNCATE')) p(priv)
               WHERE has_table_privilege($ROLE, t.oid, p.priv))
             SELECT r.tbl, string_agg(r.priv, ', ' ORDER BY r.priv),
               string_agg(format('REVOKE %s ON %s FROM %s;', r.priv, r.tbl,
                 coalesce((SELECT string_agg(CASE WHEN x.grantee = 0 THEN 'PUBLIC'
                             ELSE quote_ident(pg_get_userbyid(x.grantee)) END, ', ')
                           FROM aclexplode(coalesce(r.relacl, acldefault('r', r.relowner))) x
                           WHERE x.privilege_type = r.priv
                             AND (x.grantee = 0 OR pg_has_role($ROLE, x.grantee, 'USAGE'))),
                          'PUBLIC')), chr(10) ORDER BY r.priv)
             FROM risky r WHERE ",
            not_super!(),
            " GROUP BY r.tbl ORDER BY 1"
        ),
        message: |r| {
            format!(
                "the app role has {} on tenant table {}: TRUNCATE ignores row level security \
                 and empties every tenant's rows; a trigger it creates runs inside every \
                 tenant's transactions, sees their rows and can copy them where it reads",
                r[1], r[0]
            )
        },
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "create-on-schema",
        severity: Severity::Critical,
        query: concat!(
            "SELECT quote_ident(n.nspname), concat_ws(chr(10),
               format('REVOKE CREATE ON SCHEMA %I FROM %s;', n.nspname, ",
            grantees!("coalesce(n.nspacl, acldefault('n', n.nspowner))", "CREATE"),
            "), CASE WHEN pg_has_role($ROLE, n.nspowner, 'USAGE')
                 THEN format('ALTER SCHEMA %I OWNER TO %I;', n.nspname, ",
            new_owner!(),
            ") END)
             FROM pg_catalog.pg_namespace n
             WHERE n.nspname !~ '^pg_(toast|temp_)' AND has_schema_privilege($ROLE, n.oid, 'CREATE') AND ",
            not_super!(),
            " ORDER BY 1"
        ),
        message: |r| {
            format!(
                "the app role may CREATE in schema {}: functions, views and operators it creates \
                 run code (and shadow names) that the SQL guard never sees",
                r[0]
            )
        },
        fix: |r, _| r[1].clone(),
    },
    Check {
        id: "create-on-database",
        severity: Severity::Critical,
        query: concat!(
            "SELECT quote_ident(d.datname), concat_ws(chr(10),
               format('REVOKE CREATE ON DATABASE %I FROM %s;', d.datname, ",
            grantees!("coalesce(d.datacl, acldefault('d', d.datdba))", "CREATE"),
            "), CASE WHEN pg_has_role($ROLE, d.datdba, 'USAGE')
                 THEN format('ALTER DATABASE %I OWNER TO postgres;', d.datname) END)
             FROM pg_catalog.pg_database d
             WHERE d.datname = current_database() AND has_database_privilege($ROLE, d.oid, 'CREATE') AND ",
            not_super!()
        ),
        message: |r| {
            format!(
                "the app role may CREATE schemas in database {}, and then anything in them",
                r[0]
            )
        },
        fix: |r, _| r[1].clone(),
    },
    Check {
        id: "temp-on-database",
        severity: Severity::Warning,
        query: concat!(
            "SELECT quote_ident(d.datname),
               format('REVOKE TEMPORARY ON DATABASE %I FROM %s;', d.datname, ",
            grantees!("coalesce(d.datacl, acldefault('d', d.datdba))", "TEMPORARY"),
            ")
             FROM pg_catalog.pg_database d
             WHERE d.datname = current_database() AND has_database_privilege($ROLE, d.oid, 'TEMP') AND ",
            not_super!()
        ),
        message: |r| {
            format!(
                "the app role may create temporary objects in database {}: temporary functions \
                 (pg_temp.f) run code the SQL guard never sees, and temporary tables can shadow \
                 tenant tables for the next client of a pooled backend",
                r[0]
            )
        },
        fix: |r, _| r[1].clone(),
    },
    Check {
        id: "context-default",
        severity: Severity::Critical,
        query: role_defaults!("cfg.name = ANY ($SETTINGS)"),
        message: |r| {
            format!(
                "{} has a default for context setting {}: a transaction that reaches PostgreSQL \
                 without pgtenant's injection gets that value instead of failing closed",
                r[0], r[1]
            )
        },
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "overridden-default",
        severity: Severity::Warning,
        query: role_defaults!(
            "((cfg.name = 'client_encoding' AND cfg.clean = ANY ($UNREADABLE_ENCODINGS))
                 OR (cfg.name = 'standard_conforming_strings'
                     AND NOT (cfg.clean IN ('on', '1', 'default')
                              OR (cfg.clean <> '' AND ('true' LIKE cfg.clean || '%'
                                                       OR 'yes' LIKE cfg.clean || '%'))))
                 OR (cfg.name = 'local_preload_libraries' AND cfg.clean <> ''))"
        ),
        message: |r| {
            let what = if r[1] == "local_preload_libraries" {
                "libraries a backend loads as it starts (one that cannot be loaded fails every \
                 connection of the role)"
            } else {
                "a value under which PostgreSQL reads SQL text differently from pgtenant's guard"
            };
            format!(
                "{} has a default for {}: {what}. pgtenant's backend connections override it \
                 at startup, but anyone on the app role can set such a default on itself, and \
                 every other connection of the role gets it",
                r[0], r[1]
            )
        },
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "cross-tenant-function",
        severity: Severity::Critical,
        query: concat!(
            "SELECT format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)),
               format('REVOKE EXECUTE ON FUNCTION %I.%I(%s) FROM %s;', n.nspname, p.proname,
                 oidvectortypes(p.proargtypes), ",
            grantees!("coalesce(p.proacl, acldefault('f', p.proowner))", "EXECUTE"),
            ")
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
             WHERE ((n.nspname = 'pg_catalog' AND p.proname IN ('pg_stat_get_activity',
                      'pg_stat_get_backend_activity', 'pg_cancel_backend', 'pg_terminate_backend'))
                    OR p.proname = 'pg_stat_statements')
               AND has_function_privilege($ROLE, p.oid, 'EXECUTE') AND ",
            not_super!(),
            " ORDER BY 1"
        ),
        message: |r| {
            format!(
                "the app role may call {}: PostgreSQL lets a role read the query text of, cancel \
                 and terminate every backend of its own role, and every tenant's backends are that one role",
                r[0]
            )
        },
        fix: |r, _| r[1].clone(),
    },
    Check {
        id: "large-object-function",
        severity: Severity::Critical,
        query: concat!(
            "SELECT 'large-object functions', string_agg(f.sig, ', ' ORDER BY f.sig),
               string_agg(f.fix, chr(10) ORDER BY f.sig)
             FROM (SELECT format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)) AS sig,
                     format('REVOKE EXECUTE ON FUNCTION %I.%I(%s) FROM %s;', n.nspname, p.proname,
                       oidvectortypes(p.proargtypes), ",
            grantees!("coalesce(p.proacl, acldefault('f', p.proowner))", "EXECUTE"),
            ") AS fix
                   FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = 'pg_catalog' AND (p.proname LIKE 'lo\\_%' OR p.proname IN ('loread', 'lowrite'))
                     AND has_function_privilege($ROLE, p.oid, 'EXECUTE') AND ",
            not_super!(),
            ") f HAVING count(*) > 0"
        ),
        message: |r| {
            format!(
                "the app role may call {}: a large object belongs to the role that created it, \
                 so any tenant can read, overwrite or unlink another tenant's by OID",
                r[1]
            )
        },
        fix: |r, _| r[2].clone(),
    },
    Check {
        id: "stat-activity-query-text",
        severity: Severity::Critical,
        query: concat!(
            "SELECT 'pg_catalog.pg_stat_activity', 'may read pg_catalog.pg_stat_activity (and call pg_stat_get_activity)',
               format('REVOKE SELECT ON pg_catalog.pg_stat_activity FROM %s;', ",
            grantees!("coalesce(c.relacl, acldefault('r', c.relowner))", "SELECT"),
            ")
             FROM pg_catalog.pg_class c
             WHERE c.oid = 'pg_catalog.pg_stat_activity'::regclass
               AND has_table_privilege($ROLE, c.oid, 'SELECT')
               AND has_function_privilege($ROLE, 'pg_catalog.pg_stat_get_activity(integer)', 'EXECUTE') AND ",
            not_super!(),
            " UNION ALL
             SELECT quote_ident(g.rolname), format('is a member of %I, which has the privileges of pg_read_all_stats', g.rolname),
               format('REVOKE %I FROM %I;', g.rolname, me.rolname)
             FROM pg_catalog.pg_auth_members m
             JOIN pg_catalog.pg_roles g ON g.oid = m.roleid
             JOIN pg_catalog.pg_roles me ON me.oid = m.member
             WHERE me.rolname = $ROLE AND pg_has_role(g.oid, 'pg_read_all_stats', 'USAGE') AND ",
            not_super!()
        ),
        message: |r| {
            format!(
                "the app role {}: PostgreSQL shows a session's query, query_start, state and \
                 client address only to roles with that session's role's privileges or \
                 pg_read_all_stats, but every tenant's backends are the app role itself, so each \
                 tenant reads the statement any other tenant's backend is running or ran last, \
                 literals included",
                r[1]
            )
        },
        fix: |r, _| r[2].clone(),
    },
];

/// `query` with its placeholders replaced by literals for `params`.
pub fn bind(query: &str, params: &Params) -> String {
    let settings = params
        .settings
        .iter()
        .map(|s| quote_literal(s))
        .collect::<Vec<_>>()
        .join(", ");
    query
        .replace("$ROLE", &quote_literal(&params.role))
        .replace("$COLUMN", &quote_literal(&params.tenant_column))
        .replace("$SETTINGS", &format!("ARRAY[{settings}]::text[]"))
        .replace("$SCHEMA", &quote_literal(&params.schema))
        .replace("$UNREADABLE_ENCODINGS", &super::sql::unreadable_encodings())
}

/// The reader that replaces `current_setting('<name>')` for the setting at `index`.
pub fn reader(index: usize, name: &str, params: &Params) -> String {
    let schema = quote_ident(&params.schema);
    if index == 0 {
        format!("(SELECT {schema}.tenant_id())")
    } else {
        format!("(SELECT {schema}.setting({}))", quote_literal(name))
    }
}
