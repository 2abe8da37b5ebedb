//! sqlx through pgtenant in transaction mode: its named prepared statements reused across
//! many transactions, transactions with rollback, errors, and isolation between tenants.

mod common;

use common::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Row};

fn options(env: &TestEnv, tenant: &str, password: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host("127.0.0.1")
        .port(env.proxy.addr.port())
        .username(tenant)
        .password(password)
        .database("app")
}

#[tokio::test]
async fn sqlx_works_through_transaction_pooling() {
    let env = TestEnv::start().await;
    for (tenant, password, id) in TENANTS {
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect_with(options(&env, tenant, password))
            .await
            .unwrap();
        // The same statement (sqlx prepares and caches it per connection) in many transactions.
        for _ in 0..25 {
            let row = sqlx::query("SELECT current_setting('app.current_tenant') AS t, count(*) AS n FROM invoices WHERE amount_cents >= $1")
                .bind(0_i64)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(row.get::<String, _>("t"), id);
            assert!(row.get::<i64, _>("n") >= 2);
        }
        let tenants: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT tenant_id::text FROM invoices")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(tenants, vec![id.to_string()]);

        // CRUD in a transaction that is rolled back.
        let mut tx = pool.begin().await.unwrap();
        let new_id: i64 = sqlx::query_scalar(
            "INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1::uuid, 42) RETURNING id",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        sqlx::query("UPDATE invoices SET status = 'paid' WHERE id = $1")
            .bind(new_id)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices WHERE id = $1")
            .bind(new_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(gone, 0);

        // An error inside a transaction, then the connection keeps working.
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let err = sqlx::query("SELECT 1 / $1")
            .bind(0_i32)
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("22012")
        );
        tx.rollback().await.unwrap();
        let other = TENANTS.iter().find(|t| t.0 != tenant).unwrap().2;
        let refused =
            sqlx::query("INSERT INTO invoices (tenant_id, amount_cents) VALUES ($1::uuid, 1)")
                .bind(other)
                .execute(&mut *conn)
                .await
                .unwrap_err();
        assert_eq!(
            refused
                .as_database_error()
                .and_then(|e| e.code())
                .as_deref(),
            Some("42501")
        );
        pool.close().await;
    }
}
