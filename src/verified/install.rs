//! `pgtenant db install`: creates (or updates) the verified-context objects and installs,
//! rotates or retires keys, as a DBA role. The DDL is idempotent; the key travels only as
//! bound parameters.

use super::ContextKey;
use super::sql::Objects;

/// Which key change an install run makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStep {
    /// Install the configured key when none is; refuse a different current key.
    Install,
    /// Make the configured key current and keep the old current one valid as previous.
    Rotate,
    /// Drop the previous key (after every pgtenant reloaded the new one).
    FinishRotation,
}

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Key(String),
}

/// Runs the DDL and the key step on `client` (a DBA connection); returns a summary line.
pub async fn run(
    client: &tokio_postgres::Client,
    objects: &Objects,
    key: &ContextKey,
    step: KeyStep,
) -> Result<String, InstallError> {
    client.batch_execute("BEGIN").await?;
    let result = run_in_transaction(client, objects, key, step).await;
    match result {
        Ok(summary) => {
            client.batch_execute("COMMIT").await?;
            Ok(summary)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn run_in_transaction(
    client: &tokio_postgres::Client,
    objects: &Objects,
    key: &ContextKey,
    step: KeyStep,
) -> Result<String, InstallError> {
    let s = &objects.schema;
    client.batch_execute(&objects.install_sql()).await?;
    let mut slot_set = set_slot(client, objects, false).await?;
    let rows = client
        .query(&format!("SELECT id, state FROM {s}.keys FOR UPDATE"), &[])
        .await?;
    let installed: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let state_of = |id: i32| installed.iter().find(|k| k.0 == id).map(|k| k.1.as_str());
    let current = installed.iter().find(|k| k.1 == "current").map(|k| k.0);
    let (ipad, opad) = key.padded_blocks();
    let insert =
        format!("INSERT INTO {s}.keys (id, state, ipad, opad) VALUES ($1, 'current', $2, $3)");
    let id = key.id();
    let summary = match step {
        KeyStep::Install => match current {
            None => {
                client
                    .execute(&format!("DELETE FROM {s}.keys WHERE id = $1"), &[&id])
                    .await?;
                client.execute(&insert, &[&id, &ipad, &opad]).await?;
                Ok(format!("installed; key {id} is current"))
            }
            Some(c) if c == id => Ok(format!("installed; key {id} was already current")),
            Some(c) => Err(InstallError::Key(format!(
                "the configured key ({id}) is not the installed current key ({c}); \
                 start a rotation with --rotate"
            ))),
        },
        KeyStep::Rotate => {
            if current == Some(id) {
                return Ok(format!("key {id} is already current; nothing to rotate"));
            }
            client
                .execute(
                    &format!("DELETE FROM {s}.keys WHERE state = 'previous' OR id = $1"),
                    &[&id],
                )
                .await?;
            client
                .execute(
                    &format!("UPDATE {s}.keys SET state = 'previous' WHERE state = 'current'"),
                    &[],
                )
                .await?;
            client.execute(&insert, &[&id, &ipad, &opad]).await?;
            slot_set |= set_slot(client, objects, true).await?;
            Ok(match current {
                Some(c) => format!(
                    "rotation started: key {id} is current, key {c} stays valid as previous; \
                     reload every pgtenant, then run --finish-rotation"
                ),
                None => format!("key {id} is current"),
            })
        }
        KeyStep::FinishRotation => {
            if state_of(id) != Some("current") {
                return Err(InstallError::Key(format!(
                    "the configured key ({id}) is not the current key; refusing to drop the previous one"
                )));
            }
            let n = client
                .execute(
                    &format!("DELETE FROM {s}.keys WHERE state = 'previous'"),
                    &[],
                )
                .await?;
            slot_set |= set_slot(client, objects, true).await?;
            Ok(format!(
                "rotation finished: {n} previous key(s) dropped; key {id} is the only valid key"
            ))
        }
    }?;
    Ok(match slot_set {
        true => format!("{summary}; new slot set"),
        false => summary,
    })
}

/// Sets the secret slot number (a random positive bigint, bound as a parameter) when it is
/// unset, or always when `replace` (--rotate and --finish-rotation: proofs checked and
/// remembered under the old slot stop counting). A replaced slot becomes the previous one,
/// whose carried copies the readers still accept, so no backend has to re-enter at once;
/// the one before it is dropped. Returns whether it was set.
async fn set_slot(
    client: &tokio_postgres::Client,
    objects: &Objects,
    replace: bool,
) -> Result<bool, InstallError> {
    let seq = objects.slot_sequence();
    let current: Option<i64> = client
        .query_one(
            &format!("SELECT pg_catalog.pg_sequence_last_value('{seq}'::pg_catalog.regclass)"),
            &[],
        )
        .await?
        .get(0);
    if current.is_some() && !replace {
        return Ok(false);
    }
    if let Some(old) = current {
        let previous = objects.previous_slot_sequence();
        client
            .execute(
                &format!("SELECT pg_catalog.setval('{previous}', $1, true)"),
                &[&old],
            )
            .await?;
    }
    let slot: i64 = loop {
        let v = rand::random::<i64>() & i64::MAX;
        if v > 0 && Some(v) != current {
            break v;
        }
    };
    client
        .execute(
            &format!("SELECT pg_catalog.setval('{seq}', $1, true)"),
            &[&slot],
        )
        .await?;
    Ok(true)
}
