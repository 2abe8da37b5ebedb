//! SQL fragments the checks share (macros, so that each check's query is one `concat!`ed
//! static string), and the value of a placeholder built from pgtenant's own tables.
//! Placeholders as in [`super::checks`].

/// Tables with the tenant column, and what the app role may do with them.
macro_rules! tenant_tables {
    () => {
        "tenant_tables AS (
  SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS tbl, a.attname AS col,
         format_type(a.atttypid, a.atttypmod) AS typ, c.relrowsecurity AS rls,
         c.relforcerowsecurity AS forced, c.relowner,
         concat_ws(', ',
           CASE WHEN has_any_column_privilege($ROLE, c.oid, 'SELECT') THEN 'SELECT' END,
           CASE WHEN has_any_column_privilege($ROLE, c.oid, 'INSERT') THEN 'INSERT' END,
           CASE WHEN has_any_column_privilege($ROLE, c.oid, 'UPDATE') THEN 'UPDATE' END,
           CASE WHEN has_table_privilege($ROLE, c.oid, 'DELETE') THEN 'DELETE' END) AS privs
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = $COLUMN
       AND a.attnum > 0 AND NOT a.attisdropped
  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname !~ '^pg_(toast|temp_)')"
    };
}

/// Policies that apply to the app role (PUBLIC, the role, or a role it belongs to).
macro_rules! role_policies {
    () => {
        "role_policies AS (
  SELECT p.polrelid, p.polname, p.polcmd, p.polpermissive,
         pg_get_expr(p.polqual, p.polrelid) AS qual,
         pg_get_expr(p.polwithcheck, p.polrelid) AS chk
  FROM pg_catalog.pg_policy p
  WHERE 0::oid = ANY (p.polroles)
     OR EXISTS (SELECT 1 FROM unnest(p.polroles) AS r(oid)
                WHERE r.oid <> 0 AND pg_has_role($ROLE, r.oid, 'MEMBER')))"
    };
}

/// The roles an ACL grants `$priv` to that give it to the app role (PUBLIC or inherited).
macro_rules! grantees {
    ($acl:literal, $priv:literal) => {
        concat!(
            "coalesce((SELECT string_agg(CASE WHEN x.grantee = 0 THEN 'PUBLIC' ",
            "ELSE quote_ident(pg_get_userbyid(x.grantee)) END, ', ') FROM aclexplode(",
            $acl,
            ") x WHERE x.privilege_type = '",
            $priv,
            "' AND (x.grantee = 0 OR pg_has_role($ROLE, x.grantee, 'USAGE'))), 'PUBLIC')"
        )
    };
}

/// Superusers pass every privilege check: their one finding is role-bypasses-rls.
macro_rules! not_super {
    () => {
        "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles su WHERE su.rolname = $ROLE AND su.rolsuper)"
    };
}

/// Who should own what the app role must not own: the database owner, or `postgres` when
/// that is the app role itself.
macro_rules! new_owner {
    () => {
        "(SELECT CASE WHEN pg_has_role($ROLE, d.datdba, 'MEMBER') THEN 'postgres' \
          ELSE pg_get_userbyid(d.datdba)::text END \
          FROM pg_catalog.pg_database d WHERE d.datname = current_database())"
    };
}

/// The expression a policy should use: `<column> = (SELECT <schema>.tenant_id())::<type>`.
macro_rules! verified_expr {
    () => {
        "format('%I = (SELECT %I.tenant_id())::%s', t.col, $SCHEMA, t.typ)"
    };
}

/// Role- and database-level defaults (`pg_db_role_setting`) that reach the app role in the
/// current database, one row per setting whose lowercase name and cleaned value (`cfg.name`,
/// `cfg.clean`: letters and digits, lowercase) pass `$filter`: the object, the setting and
/// the RESET that removes it.
macro_rules! role_defaults {
    ($filter:literal) => {
        concat!(
            "SELECT CASE WHEN d.setrole = 0 AND d.setdatabase = 0 THEN 'every role in every database'
                  WHEN d.setrole = 0 THEN format('database %I', db.datname)
                  WHEN d.setdatabase = 0 THEN format('role %I', r.rolname)
                  ELSE format('role %I in database %I', r.rolname, db.datname) END,
                cfg.name,
                CASE WHEN d.setrole = 0 AND d.setdatabase = 0 THEN format('ALTER ROLE ALL RESET %s;', cfg.name)
                  WHEN d.setrole = 0 THEN format('ALTER DATABASE %I RESET %s;', db.datname, cfg.name)
                  WHEN d.setdatabase = 0 THEN format('ALTER ROLE %I RESET %s;', r.rolname, cfg.name)
                  ELSE format('ALTER ROLE %I IN DATABASE %I RESET %s;', r.rolname, db.datname, cfg.name) END
              FROM pg_catalog.pg_db_role_setting d
              LEFT JOIN pg_catalog.pg_roles r ON r.oid = d.setrole
              LEFT JOIN pg_catalog.pg_database db ON db.oid = d.setdatabase
              CROSS JOIN LATERAL (SELECT lower(split_part(item, '=', 1)) AS name,
                                         lower(regexp_replace(substr(item, strpos(item, '=') + 1),
                                                              '[^a-zA-Z0-9]', '', 'g')) AS clean
                                  FROM unnest(d.setconfig) AS item) cfg
              WHERE ",
            $filter,
            "
                AND (d.setdatabase = 0 OR db.datname = current_database())
                AND (d.setrole = 0 OR r.rolname = $ROLE)
              ORDER BY 1, 2"
        )
    };
}

/// `$UNREADABLE_ENCODINGS`: the client-only encodings the guard cannot read SQL in, as a
/// text[] of the names as PostgreSQL cleans them (lowercase letters and digits).
pub(super) fn unreadable_encodings() -> String {
    let names: Vec<String> = crate::policy::sql::CLIENT_ONLY_ENCODINGS
        .iter()
        .map(|e| super::quote_literal(e))
        .collect();
    format!("ARRAY[{}]::text[]", names.join(", "))
}
