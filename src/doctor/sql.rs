//! SQL fragments the checks share (macros, so that each check's query is one `concat!`ed
//! static string). Placeholders as in [`super::checks`].

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
