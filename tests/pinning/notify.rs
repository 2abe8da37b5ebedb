//! LISTEN/NOTIFY through pgtenant: channels scoped per tenant (keyed prefixes), prompt
//! delivery to an idle listener, nothing left for a later client, and the pid a client's
//! own notification carries.

use std::time::Duration;

use super::common::*;
use super::{outcome, pinned_gauge_is, pool};
use pgtenant::config::PinMode;
use tokio_postgres::{AsyncMessage, Client, NoTls};

type Heard = tokio::sync::mpsc::UnboundedReceiver<(String, String)>;

/// A client of `tenant` through pgtenant, and the notifications it receives.
async fn listener(env: &TestEnv, tenant: &str) -> (Client, Heard) {
    listen_on(&env.proxy.conn_str(tenant)).await
}

/// The app role straight on PostgreSQL, and the notifications it receives.
async fn direct_listener(env: &TestEnv) -> (Client, Heard) {
    listen_on(&format!(
        "host=127.0.0.1 port={} user=app_user password=app_password dbname=app",
        env.cluster.port()
    ))
    .await
}

async fn listen_on(conn_str: &str) -> (Client, Heard) {
    let (client, mut conn) = tokio_postgres::connect(conn_str, NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

async fn next_note(rx: &mut Heard) -> Option<(String, String)> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn listen_hears_its_own_tenant_only() {
    let env = TestEnv::start_with(|c| pool(c, 4, None, PinMode::Pin)).await;
    let long = async {
        let (acme, mut heard) = listener(&env, "acme").await;
        acme.batch_execute("LISTEN jobs").await.unwrap();
        // Idle between transactions, the listener still gets what its tenant sends.
        let acme2 = env.proxy.connect("acme").await;
        acme2.batch_execute("NOTIFY jobs, 'one'").await.unwrap();
        assert_eq!(
            next_note(&mut heard).await,
            Some(("jobs".into(), "one".into()))
        );
        // Another tenant on the same channel, in every spelling, is not heard; nor is a
        // channel named with acme's prefix (it gets globex's own in front).
        let mut direct = direct_listener(&env).await;
        direct
            .0
            .batch_execute(&format!(
                "LISTEN \"{}jobs\"",
                pgtenant::session::channels::channel_prefix(GLOBEX)
            ))
            .await
            .unwrap();
        let globex = env.proxy.connect("globex").await;
        let prefix = pgtenant::session::channels::channel_prefix(ACME);
        for sql in [
            "NOTIFY jobs, 'globex'".to_string(),
            "SELECT pg_notify('jobs', 'globex')".into(),
            "SELECT pg_catalog.\"pg_notify\"('jobs', 'globex')".into(),
            format!("NOTIFY \"{prefix}jobs\", 'forged'"),
            format!("SELECT pg_notify('{prefix}jobs', 'forged')"),
        ] {
            globex.batch_execute(&sql).await.unwrap();
        }
        globex
            .execute("SELECT pg_notify($1, $2)", &[&"jobs", &"bound"])
            .await
            .unwrap();
        // ... while acme's own pg_notify, bound or not, is.
        acme2
            .execute("SELECT pg_notify($1, $2)", &[&"jobs", &"two"])
            .await
            .unwrap();
        assert_eq!(
            next_note(&mut heard).await,
            Some(("jobs".into(), "two".into()))
        );
        // The sends did happen: a listener straight on PostgreSQL, on globex's prefixed
        // channel, heard them (so acme's silence is scoping, not lost messages).
        let globex_channel = format!(
            "{}jobs",
            pgtenant::session::channels::channel_prefix(GLOBEX)
        );
        let mut direct_heard = 0;
        while let Ok(Some((channel, payload))) =
            tokio::time::timeout(Duration::from_millis(300), direct.1.recv()).await
        {
            assert_eq!(channel, globex_channel);
            assert!(payload == "globex" || payload == "bound", "{payload}");
            direct_heard += 1;
        }
        assert_eq!(direct_heard, 4, "globex's own sends on its own channel");
        assert_eq!(
            tokio::time::timeout(Duration::from_millis(300), heard.recv())
                .await
                .ok()
                .flatten(),
            None,
            "acme heard another tenant"
        );
        // A body that would run NOTIFY later, unrewritten, is refused.
        assert_eq!(
            outcome(&globex, "DO $$BEGIN PERFORM pg_notify('jobs', 'x'); END$$").await,
            "0A000"
        );
        assert_eq!(pinned_gauge_is(&env, 1).await, 1);
        acme.batch_execute("UNLISTEN *").await.unwrap();
        assert_eq!(pinned_gauge_is(&env, 0).await, 0);
    };
    tokio::time::timeout(Duration::from_secs(90), long)
        .await
        .expect("no hang");
}

/// The prefix a tenant could compute for another when prefixes were a plain hash of the
/// tenant id (before they were keyed).
fn unkeyed_prefix(tenant_id: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("pgtenant channel\0{tenant_id}").as_bytes());
    let hex: String = d[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("pgt_{hex}.")
}

#[tokio::test]
async fn no_path_the_proxy_does_not_read_reaches_another_tenants_channel() {
    let env = TestEnv::start_with(|c| pool(c, 4, None, PinMode::Pin)).await;
    let long = async {
        let (globex, mut heard) = listener(&env, "globex").await;
        globex.batch_execute("LISTEN jobs").await.unwrap();
        let acme = env.proxy.connect("acme").await;
        // Paths the channel rewrite never sees: an operator and a rule that call pg_notify,
        // with the channel name a tenant can compute for another tenant.
        let forged = format!("{}jobs", unkeyed_prefix(GLOBEX));
        for sql in [
            format!(
                "CREATE OPERATOR pg_temp.### (function = pg_notify, leftarg = text, rightarg = text);
                 SELECT '{forged}' OPERATOR(pg_temp.###) 'via operator'"
            ),
            format!(
                "CREATE TEMP TABLE t (x int);
                 CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY \"{forged}\", 'via rule';
                 INSERT INTO t VALUES (1)"
            ),
        ] {
            // Refused or run: either way globex must hear nothing.
            let _ = acme.batch_execute(&sql).await;
        }
        // globex's own NOTIFY, sent after the forgeries, is the first thing it hears.
        let globex2 = env.proxy.connect("globex").await;
        globex2.batch_execute("NOTIFY jobs, 'own'").await.unwrap();
        assert_eq!(
            next_note(&mut heard).await,
            Some(("jobs".into(), "own".into()))
        );
        assert_eq!(
            tokio::time::timeout(Duration::from_millis(300), heard.recv())
                .await
                .ok()
                .flatten(),
            None
        );
        // The prefix in use is keyed: not the one computable from the tenant id.
        assert_ne!(
            pgtenant::session::channels::channel_prefix(GLOBEX),
            unkeyed_prefix(GLOBEX)
        );
    };
    tokio::time::timeout(Duration::from_secs(90), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn a_notification_reaches_an_idle_listener_at_once_and_never_a_later_client() {
    let env = TestEnv::start_with(|c| pool(c, 4, Some(3), PinMode::Pin)).await;
    let long = async {
        let sender = env.proxy.connect("acme").await;
        let mut f = Failures::default();
        for run in 0..20 {
            // The listener sends nothing more: the notification must come without a
            // request of its own to carry it (it used to wait in the proxy's buffers).
            let (listener_client, mut heard) = listener(&env, "acme").await;
            listener_client.batch_execute("LISTEN boom").await.unwrap();
            sender
                .batch_execute(&format!("NOTIFY boom, 'run{run}'"))
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(2), heard.recv())
                .await
                .ok()
                .flatten();
            f.check(got == Some(("boom".into(), format!("run{run}"))), || {
                format!("run {run}: the idle listener got {got:?} within 2 s")
            });
            // A listener that leaves as its notification arrives: what was meant for it is
            // never given to the next client of its backend.
            sender
                .batch_execute(&format!("NOTIFY boom, 'late{run}'"))
                .await
                .unwrap();
            drop(listener_client);
            let (next, mut next_heard) = listener(&env, "acme").await;
            next.batch_execute("LISTEN other").await.unwrap();
            next.batch_execute("SELECT 1").await.unwrap();
            let leaked = tokio::time::timeout(Duration::from_millis(200), next_heard.recv())
                .await
                .ok()
                .flatten();
            f.check(leaked.is_none(), || {
                format!("run {run}: a later client got {leaked:?}")
            });
            next.batch_execute("UNLISTEN *").await.unwrap();
        }
        f.finish();
    };
    tokio::time::timeout(Duration::from_secs(120), long)
        .await
        .expect("no hang");
}

#[tokio::test]
async fn a_clients_own_notification_carries_the_pid_it_was_given() {
    let env = TestEnv::start_with(|c| pool(c, 3, None, PinMode::Pin)).await;
    let mut c = super::common::raw::RawConn::connect(env.proxy.addr, "acme", "acme-secret")
        .await
        .unwrap();
    assert_ne!(c.pid, 0, "BackendKeyData");
    let m = c.simple("LISTEN mine").await;
    assert!(super::common::raw::errors(&m).is_empty(), "{m:?}");
    let m = c.simple("NOTIFY mine, 'self'").await;
    let mut notes: Vec<(u8, bytes::Bytes)> =
        m.iter().filter(|(tag, _)| *tag == b'A').cloned().collect();
    if notes.is_empty() {
        // Delivered after the ReadyForQuery: read it.
        let late = tokio::time::timeout(Duration::from_secs(2), c.recv())
            .await
            .expect("the notification")
            .expect("the connection is open");
        notes.push(late);
    }
    let (tag, body) = &notes[0];
    assert_eq!(*tag, b'A');
    let pid = i32::from_be_bytes(body[..4].try_into().unwrap());
    // Drivers skip their own notifications by comparing this with BackendKeyData's pid.
    assert_eq!(pid, c.pid);
    // Another client's NOTIFY keeps the sender's pid (never this client's).
    let other = env.proxy.connect("acme").await;
    other.batch_execute("NOTIFY mine, 'other'").await.unwrap();
    let (tag, body) = tokio::time::timeout(Duration::from_secs(2), c.recv())
        .await
        .expect("the other notification")
        .expect("open");
    assert_eq!(tag, b'A');
    assert_ne!(i32::from_be_bytes(body[..4].try_into().unwrap()), c.pid);
}
