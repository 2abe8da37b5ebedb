//! The /metrics exposition passes `promtool check metrics` (format and Prometheus naming
//! lints) after real traffic: successful and failed logins, transactions, an error, and a
//! refused context change, so that lazily created series are present too.
//!
//! promtool (Debian package `prometheus`) is required under CI (`CI` set); elsewhere the
//! test prints a skip message when it is missing.

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::AsyncWriteExt;

/// The body of an HTTP/1.1 response as read by `http_get` (headers stripped; the metrics
/// endpoint answers with a Content-Length body).
fn body(response: &str) -> &str {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body
}

#[tokio::test]
async fn metrics_exposition_passes_promtool_check_metrics() {
    let Some(promtool) = promtool() else { return };
    let env = TestEnv::start().await;

    // Traffic: transactions for two tenants, an error, a refused context change.
    for tenant in ["acme", "globex"] {
        let c = env.proxy.connect(tenant).await;
        for _ in 0..3 {
            c.query_one("SELECT count(*) FROM invoices", &[])
                .await
                .unwrap();
        }
        c.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
        let stmt = c.prepare("SELECT $1::int + 1").await.unwrap();
        c.query_one(&stmt, &[&1i32]).await.unwrap();
        assert!(c.simple_query("SELECT 1/0").await.is_err());
        assert!(
            c.simple_query("SET app.current_tenant = 'x'")
                .await
                .is_err()
        );
    }
    // Authentication failures: a wrong password and an unknown tenant.
    assert!(
        connect(&env.proxy.conn_str_with("acme", "wrong-password"))
            .await
            .is_err()
    );
    assert!(
        connect(&env.proxy.conn_str_with("nobody", "whatever"))
            .await
            .is_err()
    );

    let metrics_addr = env.proxy.metrics_addr.expect("metrics listener");
    let response = http_get(metrics_addr, "/metrics").await;
    let text = body(&response);
    assert!(text.contains("pgtenant_auth_attempts_total"), "{text}");
    assert!(text.contains("result=\"failure\""), "{text}");

    let mut child = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nexposition:\n{text}",
        out.status
    );
}
