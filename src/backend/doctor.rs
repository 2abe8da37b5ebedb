//! Start-up safety checks on the backend role: RLS only protects tenants when the role the
//! proxy logs in as can neither bypass it nor own unforced tables.

use super::{BackendConn, BackendError};

/// A problem found with the backend role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding(pub String);

/// Checks the connected role and returns every finding (empty when safe).
pub async fn check_role(conn: &mut BackendConn) -> Result<Vec<Finding>, BackendError> {
    let mut findings = Vec::new();
    let rows = conn
        .simple_query(
            "SELECT r.rolname, r.rolsuper, r.rolbypassrls, \
               EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON b.oid = m.roleid \
                       WHERE m.member = r.oid AND (b.rolsuper OR b.rolbypassrls)) \
             FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
        )
        .await?;
    if let Some(row) = rows.first() {
        let yes = |i: usize| row.get(i).and_then(|v| v.as_deref()) == Some("t");
        let role = row.first().cloned().flatten().unwrap_or_default();
        if yes(1) {
            findings.push(Finding(format!(
                "backend role {role:?} is a SUPERUSER: row level security does not apply to it"
            )));
        }
        if yes(2) {
            findings.push(Finding(format!(
                "backend role {role:?} has BYPASSRLS: row level security does not apply to it"
            )));
        }
        if yes(3) {
            findings.push(Finding(format!(
                "backend role {role:?} is a member of a role with SUPERUSER or BYPASSRLS"
            )));
        }
    }
    let owned = conn
        .simple_query(
            "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) \
               AND c.relkind IN ('r', 'p') AND NOT (c.relrowsecurity AND c.relforcerowsecurity) \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
             ORDER BY 1 LIMIT 20",
        )
        .await?;
    for row in owned {
        let table = row.into_iter().next().flatten().unwrap_or_default();
        findings.push(Finding(format!(
            "backend role owns table {table} without ENABLE and FORCE ROW LEVEL SECURITY: its rows are not filtered for the owner"
        )));
    }
    Ok(findings)
}
