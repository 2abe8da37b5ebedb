//! Pipelined input read as PostgreSQL reads it: copy messages behind the Execute that
//! starts a COPY, long pipelines with large replies, and a backend's FATAL as the last
//! word. Each exchange is first run straight against PostgreSQL as the app role.

use super::*;

/// COPY FROM STDIN started by Execute with its CopyData and CopyDone pipelined in the same
/// write, before PostgreSQL's CopyInResponse: PostgreSQL reads them as the COPY's data.
/// The proxy once dropped them (its input was not in COPY mode yet) and the client waited
/// for ever. And stray copy messages behind an Execute that is no COPY, with no Sync or
/// Flush before them: PostgreSQL ignores them, and the proxy must not wait for a reply that
/// PostgreSQL sends only when asked. Each exchange is first run straight against
/// PostgreSQL as the app role, and must look the same through pgtenant.
#[tokio::test]
async fn copy_messages_pipelined_behind_an_execute_are_read_as_postgresql_reads_them() {
    let mut f = Failures::default();
    for guard in [true, false] {
        let env = TestEnv::start_with(|c| c.server.sql_guard = guard).await;
        let copy = {
            let mut out = BytesMut::new();
            raw::extended(&mut out, "COPY t FROM STDIN", &[]);
            messages::write_msg(&mut out, b'd', |b| b.put_slice(b"1\n2\n"));
            messages::write_msg(&mut out, b'c', |_| {});
            raw::sync(&mut out);
            out
        };
        let stray = {
            let mut out = BytesMut::new();
            raw::extended(&mut out, "SELECT count(*) FROM t", &[]);
            messages::write_msg(&mut out, b'd', |b| b.put_slice(b"3\n"));
            messages::write_msg(&mut out, b'c', |_| {});
            raw::sync(&mut out);
            out
        };
        let mut answers = Vec::new();
        for through in [false, true] {
            let mut c = env.raw_acme_or_direct(through).await;
            c.simple("BEGIN; CREATE TEMP TABLE t(x int) ON COMMIT DROP")
                .await;
            let mut seen = Vec::new();
            for bytes in [&copy, &stray] {
                c.send(bytes).await;
                let r = tokio::time::timeout(Duration::from_secs(5), c.until_ready()).await;
                seen.push(match r {
                    Ok(m) => format!("{} {:?}", raw::tags(&m), raw::data_rows(&m)),
                    Err(_) => "no ReadyForQuery within 5 s".to_string(),
                });
            }
            c.simple("ROLLBACK").await;
            answers.push(seen);
        }
        f.check(
            answers[0] == vec!["12GCZ []".to_string(), "12DCZ [[Some(\"2\")]]".to_string()],
            || format!("guard {guard}: PostgreSQL answered {:?}", answers[0]),
        );
        f.check(answers[1] == answers[0], || {
            format!(
                "guard {guard}: through pgtenant {:?}, PostgreSQL {:?}",
                answers[1], answers[0]
            )
        });
    }
    f.finish();
}

/// Parse once, then `n` x (Bind with a `width`-byte text parameter, Execute), then Sync;
/// each result row is four times the parameter.
fn echo_pipeline(n: usize, width: usize) -> BytesMut {
    let mut b = BytesMut::new();
    messages::parse(&mut b, "", "SELECT $1::text, $1::text, $1::text, $1::text");
    let p = "y".repeat(width);
    for _ in 0..n {
        messages::bind(&mut b, "", std::iter::once(p.as_bytes()));
        messages::execute(&mut b);
    }
    raw::sync(&mut b);
    b
}

/// Writes `bytes` from one task while this one reads the replies as they come; returns
/// (DataRows, ReadyForQuerys, timed out) within `secs`. The client leaves on return.
async fn write_while_reading(c: RawConn, bytes: BytesMut, secs: u64) -> (usize, usize, bool) {
    let (mut r, mut w) = tokio::io::split(c.stream);
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    let mut buf = BytesMut::with_capacity(1 << 20);
    let (mut rows, mut zs, mut timed_out) = (0, 0, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    'read: loop {
        while let Ok(Some(f)) = pgtenant::protocol::codec::split_frame(&mut buf, 1 << 30) {
            match f.tag {
                b'D' => rows += 1,
                b'Z' => {
                    zs += 1;
                    break 'read;
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(deadline, r.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    writer.abort();
    (rows, zs, timed_out)
}

/// A client that pipelines more than the sockets hold while it reads its replies (here 200
/// Bind/Execute pairs with a 100 kB parameter, 400 kB per row back) is served completely,
/// as PostgreSQL serves it. The relay once finished each write to the backend before it
/// read again, while PostgreSQL, its output full, had stopped reading its input: both waited
/// for ever (PostgreSQL `active/ClientWrite`), and since the session was stuck in that write
/// the client's leaving went unseen and the backend was never given back (pool of one:
/// every other tenant got 08006). Found by a red-team pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_that_reads_its_replies_is_served_in_full() {
    let env = TestEnv::start_with(|c| {
        for db in c.databases.values_mut() {
            db.pool_size = 1;
        }
    })
    .await;
    let (n, width) = (200, 100_000);
    let d = env.raw_acme_or_direct(false).await;
    let direct = write_while_reading(d, echo_pipeline(n, width), 60).await;
    assert_eq!(direct, (n, 1, false), "PostgreSQL itself");
    let a = env.raw_acme_or_direct(true).await;
    let through = write_while_reading(a, echo_pipeline(n, width), 60).await;
    assert_eq!(
        through, direct,
        "(rows, ReadyForQuery, timed out) through pgtenant"
    );
    // Again, leaving halfway: the backend is closed and the next tenant served.
    let a = env.raw_acme_or_direct(true).await;
    let cut = write_while_reading(a, echo_pipeline(n, width), 0).await;
    assert!(cut.0 < n, "{cut:?}");
    assert_eq!(
        env.globex_served().await.as_deref(),
        Ok(GLOBEX),
        "after acme left"
    );
}

/// A simple Query inside a COPY IN started by Execute breaks the protocol: PostgreSQL
/// answers ERROR and FATAL 08P01 and closes. The client gets exactly those two through
/// pgtenant; it once got a third, pgtenant's own FATAL 08006 "server closed the connection
/// unexpectedly" (found by a red-team pass). Other clients go on.
#[tokio::test]
async fn a_backend_fatal_is_the_last_word_the_client_gets() {
    let env = TestEnv::start().await;
    let mut b = BytesMut::new();
    messages::query(&mut b, "BEGIN; CREATE TEMP TABLE t(x int) ON COMMIT DROP");
    raw::extended(&mut b, "COPY t FROM STDIN", &[]);
    messages::write_msg(&mut b, b'd', |x| x.put_slice(b"1\n"));
    messages::query(&mut b, "SELECT 6");
    messages::write_msg(&mut b, b'c', |_| {});
    raw::sync(&mut b);
    let mut answers = Vec::new();
    for through in [false, true] {
        let mut c = env.raw_acme_or_direct(through).await;
        c.send(&b).await;
        let mut m = Vec::new();
        while let Ok(Some(x)) = tokio::time::timeout(Duration::from_secs(3), c.recv()).await {
            m.push(x);
        }
        answers.push(
            raw::errors(&m)
                .iter()
                .map(|e| format!("{} {}", e.severity, e.code))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(answers[0], ["ERROR 08P01", "FATAL 08P01"], "PostgreSQL");
    assert_eq!(answers[1], answers[0], "through pgtenant");
    let c = env.proxy.connect("globex").await;
    assert_eq!(one(&c, CTX).await, GLOBEX);
}
