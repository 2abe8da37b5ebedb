//! Test harness: a real throwaway PostgreSQL with the demo schema (plus a third tenant) and
//! an in-process pgtenant in front of it, both on free ports.
#![allow(dead_code)]

pub mod certs;
pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;

use pgtenant::auth::scram::ScramVerifier;
use pgtenant::config::{Config, TenantConfig};
use pgtenant::metrics::Metrics;
use pgtenant::pgcluster::TempCluster;
use pgtenant::shared::Server;
use tokio::sync::watch;

pub const ACME: &str = "11111111-1111-4111-8111-111111111111";
pub const GLOBEX: &str = "22222222-2222-4222-8222-222222222222";
pub const INITECH: &str = "33333333-3333-4333-8333-333333333333";

/// (tenant name, password, tenant id) for the three test tenants.
pub const TENANTS: [(&str, &str, &str); 3] = [
    ("acme", "acme-secret", ACME),
    ("globex", "globex-secret", GLOBEX),
    ("initech", "initech-secret", INITECH),
];

/// The tenant id for a tenant name.
pub fn tenant_id(name: &str) -> &'static str {
    TENANTS
        .iter()
        .find(|t| t.0 == name)
        .map(|t| t.2)
        .expect("known tenant")
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub server: Arc<Server>,
    stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy with `cfg` (listen addresses are forced to free ports).
    pub async fn start(mut cfg: Config) -> Proxy {
        init_test_log();
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        let (stop, shutdown) = watch::channel(false);
        let r = pgtenant::server::start(cfg, Arc::new(Metrics::new()), shutdown)
            .await
            .expect("proxy starts");
        Proxy {
            addr: r.addr,
            metrics_addr: r.metrics_addr,
            server: r.server,
            stop,
            task: r.task,
        }
    }

    /// Asks the proxy to stop and waits for its accept loop to end.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// A libpq-style connection string for `tenant` with its password.
    pub fn conn_str(&self, tenant: &str) -> String {
        let pw = TENANTS
            .iter()
            .find(|t| t.0 == tenant)
            .map(|t| t.1)
            .unwrap_or("nope");
        self.conn_str_with(tenant, pw)
    }

    /// A connection string for any user and password.
    pub fn conn_str_with(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=app",
            self.addr.port()
        )
    }

    /// A URL for psql.
    pub fn url(&self, tenant: &str) -> String {
        let pw = TENANTS
            .iter()
            .find(|t| t.0 == tenant)
            .map(|t| t.1)
            .unwrap_or("nope");
        format!(
            "postgresql://{tenant}:{pw}@127.0.0.1:{}/app",
            self.addr.port()
        )
    }

    /// Connects as `tenant` with tokio-postgres.
    pub async fn connect(&self, tenant: &str) -> tokio_postgres::Client {
        connect(&self.conn_str(tenant))
            .await
            .expect("connect through pgtenant")
    }

    /// Scrapes /metrics.
    pub async fn metrics(&self) -> String {
        http_get(self.metrics_addr.expect("metrics listener"), "/metrics").await
    }
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(conn_str: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A minimal HTTP GET (no client library needed).
/// The value of the first line of a Prometheus text page that starts with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// PostgreSQL with the demo schema plus tenant `initech`, and a proxy in front of it.
pub struct TestEnv {
    pub cluster: TempCluster,
    pub proxy: Proxy,
}

impl TestEnv {
    /// Default test setup: pool of 5 backend connections, transaction pooling.
    pub async fn start() -> TestEnv {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestEnv::start`], with the config adjusted by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> TestEnv {
        let cluster = start_cluster().await;
        let mut cfg = test_config(&cluster);
        f(&mut cfg);
        let proxy = Proxy::start(cfg).await;
        TestEnv { cluster, proxy }
    }

    /// The test config for this cluster (for starting more proxies).
    pub fn config(&self) -> Config {
        test_config(&self.cluster)
    }

    /// A superuser connection straight to PostgreSQL.
    pub async fn superuser(&self) -> tokio_postgres::Client {
        let s = format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=app",
            self.cluster.port(),
            self.cluster.superuser_password()
        );
        connect(&s).await.expect("superuser connect")
    }

    /// A connection straight to PostgreSQL as the app role (what pgtenant logs in as).
    pub async fn app_user_direct(&self) -> tokio_postgres::Client {
        let s = format!(
            "host=127.0.0.1 port={} user=app_user password=app_password dbname=app",
            self.cluster.port()
        );
        connect(&s).await.expect("app_user connect")
    }

    /// A byte-level connection: through pgtenant as tenant acme, or straight to PostgreSQL
    /// as the app role (to compare the two answers to the same bytes).
    pub async fn raw_acme_or_direct(&self, through: bool) -> raw::RawConn {
        if through {
            raw::RawConn::connect(self.proxy.addr, "acme", "acme-secret").await
        } else {
            let addr = format!("127.0.0.1:{}", self.cluster.port())
                .parse()
                .unwrap();
            raw::RawConn::connect_with(
                addr,
                &[("user", "app_user"), ("database", "app")],
                "app_password",
            )
            .await
        }
        .expect("raw connect")
    }

    /// The context a new globex client sees within 20 s (the pool may first have to free a
    /// backend); an error or a timeout as text.
    pub async fn globex_served(&self) -> Result<String, String> {
        let served = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            let g = connect(&self.proxy.conn_str("globex")).await?;
            g.query_one("SELECT current_setting('app.current_tenant')", &[])
                .await
                .map(|r| r.get::<_, String>(0))
        })
        .await;
        match served {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 20 s".into()),
        }
    }
}

/// Starts PostgreSQL with the demo schema and a third tenant.
pub async fn start_cluster() -> TempCluster {
    let cluster = pgtenant::demo::start_cluster()
        .await
        .expect("cluster with demo schema");
    cluster
        .psql(
            "app",
            &format!(
                "INSERT INTO tenants VALUES ('{INITECH}', 'Initech');
                 INSERT INTO invoices (tenant_id, amount_cents) VALUES ('{INITECH}', 7), ('{INITECH}', 8);"
            ),
        )
        .await
        .expect("third tenant");
    cluster
}

/// The example config, pointed at `cluster`, with a third tenant and a pool of 5.
pub fn test_config(cluster: &TempCluster) -> Config {
    let mut cfg = pgtenant::demo::config_for(cluster).expect("example config");
    cfg.tenants.insert(
        "initech".into(),
        TenantConfig {
            id: INITECH.into(),
            password: ScramVerifier::hash_password("initech-secret"),
            ..Default::default()
        },
    );
    for db in cfg.databases.values_mut() {
        db.pool_size = 5;
        db.checkout_timeout = std::time::Duration::from_secs(20);
    }
    cfg
}

/// SQLSTATE of a tokio-postgres error, if it came from the server.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Collects failed checks so a test reports all of them at once.
#[derive(Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    /// Records `what()` when `ok` is false.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    /// Fails the test with every recorded failure.
    pub fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} failed checks:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}

/// Polls PostgreSQL until no app_user backend is inside a transaction (up to 10 s);
/// returns the last count seen.
pub async fn idle_in_transaction(su: &tokio_postgres::Client) -> i64 {
    let mut n = -1;
    for _ in 0..100 {
        n = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user' AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    n
}

/// Opt-in proxy logs for debugging a test: `PGTENANT_TEST_LOG=<filter>` writes them to
/// `PGTENANT_TEST_LOG_FILE` (default: stderr).
fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let Ok(filter) = std::env::var("PGTENANT_TEST_LOG") else {
        return;
    };
    ONCE.call_once(|| {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false);
        match std::env::var("PGTENANT_TEST_LOG_FILE") {
            Ok(path) => {
                let file = std::fs::File::create(path).expect("log file");
                let _ = builder.with_writer(std::sync::Mutex::new(file)).try_init();
            }
            Err(_) => {
                let _ = builder.try_init();
            }
        }
    });
}

/// promtool, or None (with a message) when it is missing outside CI; under CI a missing
/// promtool fails the test.
pub fn promtool() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is required under CI (apt-get install prometheus; see .ci/run)"
        );
        eprintln!("SKIP: promtool not found (apt-get install prometheus); promtool checks skipped");
    }
    found
}

/// The single text value a query returns (panics, naming the query, on any error).
pub async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}
