//! What one tenant's clients may take of what all tenants share: the runtime's thread and
//! the parser slots (a long text for PostgreSQL's parser), and the memory of large messages
//! while they arrive.

use std::time::Duration;

use bytes::BytesMut;

use super::common::raw::{self, RawConn};
use super::common::*;
use pgtenant::protocol::messages;

/// A Query message of 3 MiB (a client withholding its last byte holds it all).
fn query_of_3_mib() -> BytesMut {
    let mut query = BytesMut::new();
    messages::query(
        &mut query,
        &format!("SELECT '{}'", "x".repeat(3 * 1024 * 1024)),
    );
    query
}

/// A text that needs PostgreSQL's parser is read off the runtime's thread: while one
/// tenant's long text is parsed (hundreds of milliseconds), another tenant's queries are
/// answered. The proxy runs on this test's one thread, as it runs on one worker on a small
/// machine; read inline, the parse held the thread and every other client waited for it.
#[tokio::test]
async fn a_text_being_parsed_does_not_stall_other_tenants() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = TestEnv::start().await;
    let acme = env.proxy.connect("acme").await;
    let globex = env.proxy.connect("globex").await;
    assert_eq!(one(&globex, "SELECT 1::text").await, "1");
    // Two statements (the fast path does not clear them), the second refused by the parser
    // path (it runs the proxy's own statement): answered without a round trip to PostgreSQL.
    let list = vec!["1"; 40_000].join(",");
    let text = format!("SELECT 1 WHERE 1 IN ({list}); EXECUTE pgtenant_ctx('x')");
    let answered = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let parse = async {
        let r = acme.batch_execute(&text).await;
        answered.store(true, Ordering::SeqCst);
        eprintln!("acme answered after {:?}", started.elapsed());
        r
    };
    let others = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..50 {
            assert_eq!(one(&globex, "SELECT 1::text").await, "1");
        }
        eprintln!("globex served 50 after {:?}", started.elapsed());
        answered.load(Ordering::SeqCst)
    };
    let (r, acme_first) = tokio::join!(parse, others);
    assert_eq!(
        r.as_ref().err().and_then(sqlstate).as_deref(),
        Some("42501"),
        "{r:?}"
    );
    assert!(
        !acme_first,
        "another tenant waited for the parse of acme's text"
    );
    assert_eq!(one(&acme, "SELECT 1::text").await, "1");
}

/// One tenant's texts are parsed one at a time: a tenant that sends many texts for the
/// parser at once from several clients holds one parser slot, and another tenant's text is
/// read before the first tenant's last.
#[tokio::test]
async fn one_tenant_does_not_hold_every_parser_slot() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let env = TestEnv::start().await;
    let list = vec!["1"; 40_000].join(",");
    let text = format!("SELECT 1 WHERE 1 IN ({list}); EXECUTE pgtenant_ctx('x')");
    let mut acme = Vec::new();
    for _ in 0..4 {
        acme.push(env.proxy.connect("acme").await);
    }
    let globex = env.proxy.connect("globex").await;
    let order = AtomicUsize::new(0);
    let send = |c: &'static str, i: usize, delay: u64| {
        let (text, order, clients, globex) = (&text, &order, &acme, &globex);
        async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let client = if c == "acme" { &clients[i] } else { globex };
            let r = client.batch_execute(text).await;
            assert_eq!(
                r.as_ref().err().and_then(sqlstate).as_deref(),
                Some("42501"),
                "{r:?}"
            );
            order.fetch_add(1, Ordering::SeqCst)
        }
    };
    let (a0, a1, a2, a3, globex_place) = tokio::join!(
        send("acme", 0, 0),
        send("acme", 1, 0),
        send("acme", 2, 0),
        send("acme", 3, 0),
        send("globex", 0, 50)
    );
    let acme_places = [a0, a1, a2, a3];
    assert!(
        globex_place < acme.len(),
        "globex's text was read after all of acme's (places: acme {acme_places:?}, globex {globex_place})"
    );
}

/// `tenant` sends `partial` (a large message but its last byte) on a new connection and is
/// told, at once, FATAL 53200 naming the setting `key`.
async fn refused_large(env: &TestEnv, tenant: &str, partial: &[u8], key: &str) {
    let pw = format!("{tenant}-secret");
    let mut c = RawConn::connect(env.proxy.addr, tenant, &pw).await.unwrap();
    c.send(partial).await;
    let got = tokio::time::timeout(Duration::from_secs(10), c.until_ready())
        .await
        .expect("an answer, not a wait");
    let errs = raw::errors(&got);
    assert_eq!(errs.len(), 1, "{got:?}");
    assert_eq!(
        (errs[0].severity.as_str(), errs[0].code.as_str()),
        ("FATAL", "53200")
    );
    assert!(errs[0].message.contains(key), "{got:?}");
}

/// Large messages held while they arrive take from one budget for all clients: a client
/// that withholds the last byte of a large message holds all of it, and many such clients
/// grew the proxy without bound (red-team: 60 MB per connection). Past
/// `large_message_bytes_total` the next one ends with FATAL 53200; others are served.
#[tokio::test]
async fn large_messages_arriving_share_one_budget() {
    let env = TestEnv::start_with(|c| {
        c.server.max_message_size = 4 * 1024 * 1024;
        c.server.large_message_bytes_total = 8 * 1024 * 1024;
        c.server.large_message_bytes_per_tenant = 8 * 1024 * 1024;
    })
    .await;
    let query = query_of_3_mib();
    let partial = &query[..query.len() - 1];
    let mut holders = Vec::new();
    for tenant in ["acme", "globex"] {
        let pw = format!("{tenant}-secret");
        let mut c = RawConn::connect(env.proxy.addr, tenant, &pw).await.unwrap();
        c.send(partial).await;
        holders.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    refused_large(&env, "initech", partial, "large_message_bytes_total").await;
    // Others are served meanwhile; a holder that finishes its message gets its answer.
    let globex = env.proxy.connect("globex").await;
    assert_eq!(one(&globex, "SELECT 1::text").await, "1");
    let mut first = holders.remove(0);
    first.send(&query[query.len() - 1..]).await;
    assert!(raw::errors(&first.until_ready().await).is_empty());
    // Its share is given back: another client may send a large message now.
    let mut again = RawConn::connect(env.proxy.addr, "initech", "initech-secret")
        .await
        .unwrap();
    again.send(&query).await;
    assert!(raw::errors(&again.until_ready().await).is_empty());
}

/// One tenant's clients hold at most `large_message_bytes_per_tenant` of the budget
/// together (red-team: one tenant's 18 partial messages took the whole 1 GiB, and every
/// other tenant's large message then ended its session).
#[tokio::test]
async fn one_tenant_cannot_take_the_whole_large_message_budget() {
    let env = TestEnv::start_with(|c| {
        c.server.max_message_size = 4 * 1024 * 1024;
        c.server.large_message_bytes_total = 16 * 1024 * 1024;
        c.server.large_message_bytes_per_tenant = 4 * 1024 * 1024;
    })
    .await;
    let query = query_of_3_mib();
    let partial = &query[..query.len() - 1];
    let mut acme = RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    acme.send(partial).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    refused_large(&env, "acme", partial, "large_message_bytes_per_tenant").await;
    // Another tenant still may send one.
    let mut globex = RawConn::connect(env.proxy.addr, "globex", "globex-secret")
        .await
        .unwrap();
    globex.send(&query).await;
    assert!(raw::errors(&globex.until_ready().await).is_empty());
    acme.send(&query[query.len() - 1..]).await;
    assert!(raw::errors(&acme.until_ready().await).is_empty());
}
