//! The system under test: a throwaway PostgreSQL (synchronous commit, so an immediate
//! restart loses no reported commit), N tenants with the example RLS schema, the relay, and
//! the pgtenant binary as a child process (so SIGHUP and its RSS are real).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgtenant::auth::scram::ScramVerifier;
use pgtenant::pgcluster::{ClusterOptions, TempCluster};
use tokio_postgres::{Client, NoTls};

use super::relay::Relay;

/// One generated tenant.
pub struct Tenant {
    pub name: String,
    pub password: String,
    pub id: String,
}

/// Everything a run talks to.
pub struct World {
    pub cluster: TempCluster,
    pub relay: Relay,
    pub child: std::sync::Mutex<tokio::process::Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    /// Where pgtenant serves /metrics (the verdict cache's gauges are read from it).
    pub metrics: SocketAddr,
    pub tenants: Vec<Tenant>,
    by_id: HashMap<String, usize>,
    cfg_path: PathBuf,
    tenants_toml: String,
    /// The `[tls]` section: TLS offered with a certificate made for the run (plaintext too).
    tls_toml: String,
    /// What TLS raw clients trust: the run's own CA.
    pub tls_client: std::sync::Arc<rustls::ClientConfig>,
}

/// A CA and a server certificate for `localhost` in `dir`: the `[tls]` lines that offer
/// TLS with it (plaintext still accepted), and a client configuration that trusts it.
fn tls_for(dir: &std::path::Path) -> (String, std::sync::Arc<rustls::ClientConfig>) {
    use super::common::certs::{Ca, dns, ip};
    let ca = Ca::new("chaos CA");
    let ca_file = ca.write(dir, "ca.crt");
    let server = ca.issue(
        dir,
        "server",
        "localhost",
        vec![dns("localhost"), ip("127.0.0.1")],
        false,
        true,
    );
    let toml = format!(
        "mode = \"allow\"\ncert_file = {:?}\nkey_file = {:?}",
        server.cert.display().to_string(),
        server.key.display().to_string()
    );
    let mut roots = rustls::RootCertStore::empty();
    pgtenant::tls::server::add_pem_roots(&mut roots, &ca_file).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(pgtenant::tls::server::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (toml, std::sync::Arc::new(client))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl World {
    /// Starts PostgreSQL, loads the example schema, adds `n` tenants and starts pgtenant
    /// (behind the relay) with a pool of `pool`.
    pub async fn start(n: usize, pool: usize) -> World {
        let opts = ClusterOptions {
            extra_conf: vec![("synchronous_commit".into(), "on".into())],
            ..Default::default()
        };
        let cluster = TempCluster::start(opts).await.expect("PostgreSQL starts");
        pgtenant::demo::load_example(&cluster)
            .await
            .expect("example schema");
        let tenants: Vec<Tenant> = (0..n)
            .map(|i| Tenant {
                name: format!("t{i:03}"),
                password: format!("pw-{i:03}"),
                id: format!("c0000000-0000-4000-8000-{i:012}"),
            })
            .collect();
        let values: Vec<String> = tenants
            .iter()
            .map(|t| format!("('{}', 'chaos {}')", t.id, t.name))
            .collect();
        cluster
            .psql(
                "app",
                &format!("INSERT INTO tenants VALUES {};", values.join(",")),
            )
            .await
            .expect("tenants inserted");
        let mut tenants_toml = String::new();
        for t in &tenants {
            tenants_toml += &format!(
                "\n[tenants.{}]\nid = \"{}\"\npassword = \"{}\"\nsettings = {{ \"app.tenant_plan\" = \"free\" }}\n",
                t.name,
                t.id,
                ScramVerifier::hash_password(&t.password)
            );
        }
        let relay = Relay::start(cluster.port()).await;
        let dir = cluster.data_dir().parent().unwrap().join("chaos");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg_path = dir.join("pgtenant.toml");
        let by_id = tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        let (tls_toml, tls_client) = tls_for(&dir);
        let port = free_port();
        let mut w = World {
            cluster,
            relay,
            child: std::sync::Mutex::new(tokio::process::Command::new("true").spawn().unwrap()),
            pid: 0,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            metrics: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            tenants,
            by_id,
            cfg_path,
            tenants_toml,
            tls_toml,
            tls_client,
        };
        w.write_config(pool);
        let log_path = std::env::var("CHAOS_PGTENANT_LOG_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| dir.join("pgtenant.log"));
        let log = std::fs::File::create(log_path).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
            .args(["--config", w.cfg_path.to_str().unwrap()])
            .args(["--listen", &w.addr.to_string()])
            .args(["--metrics-listen", &w.metrics.to_string()])
            .env(
                "PGTENANT_LOG",
                std::env::var("CHAOS_PGTENANT_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env(
                "PGTENANT_CONTEXT_KEY",
                std::str::from_utf8(pgtenant::demo::DEMO_CONTEXT_KEY).unwrap(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("pgtenant starts");
        w.pid = child.id().unwrap();
        *w.child.lock().unwrap() = child;
        for _ in 0..100 {
            if w.connect(0).await.is_ok() {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "pgtenant did not come up (see {})",
            dir.join("pgtenant.log").display()
        );
    }

    /// Writes the config file with a pool of `pool` backends (read again on reload).
    pub fn write_config(&self, pool: usize) {
        let base = include_str!("../../config.toml")
            .replace("port = 5432", &format!("port = {}", self.relay.port))
            .replace("pool_size = 20", &format!("pool_size = {pool}"))
            .replace("checkout_timeout = \"5s\"", "checkout_timeout = \"10s\"")
            .replace("mode = \"disable\"", &self.tls_toml);
        let tmp = self.cfg_path.with_extension("tmp");
        std::fs::write(&tmp, format!("{base}{}", self.tenants_toml)).unwrap();
        std::fs::rename(&tmp, &self.cfg_path).unwrap();
    }

    /// Sends pgtenant a signal.
    #[allow(
        unsafe_code,
        reason = "kill(2) has no safe wrapper in the dependencies"
    )]
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the child we started, with a valid signal number.
        unsafe {
            libc::kill(self.pid as i32, sig);
        }
    }

    /// pgtenant's resident set size in KiB.
    pub fn rss_kb(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The guard's verdict cache as /metrics reports it (entries, bytes of text): the one
    /// structure meant to grow over a run, so memory figures are read beside it.
    pub async fn verdict_cache(&self) -> (u64, u64) {
        let body = crate::common::http_get(self.metrics, "/metrics").await;
        let gauge =
            |name: &str| crate::common::metric(&body, &format!("{name} ")).unwrap_or(0.0) as u64;
        (
            gauge("pgtenant_sql_verdict_cache_entries"),
            gauge("pgtenant_sql_verdict_cache_bytes"),
        )
    }

    /// The connection string of tenant `i` through pgtenant.
    pub fn conn_str(&self, i: usize) -> String {
        let t = &self.tenants[i];
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname=app connect_timeout=10",
            self.addr.port(),
            t.name,
            t.password
        )
    }

    /// Connects as tenant `i` (connection driven in the background).
    pub async fn connect(&self, i: usize) -> Result<Client, tokio_postgres::Error> {
        let (c, conn) = tokio_postgres::connect(&self.conn_str(i), NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(c)
    }

    /// The tenant index of a tenant id (None for the example's own tenants).
    pub fn tenant_index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// A superuser connection straight to PostgreSQL (None while it restarts).
    pub async fn superuser(&self) -> Option<Client> {
        let s = format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname=app connect_timeout=5",
            self.cluster.port(),
            self.cluster.superuser_password()
        );
        let (c, conn) = tokio_postgres::connect(&s, NoTls).await.ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(c)
    }

    /// Runs pg_ctl on the cluster (as the postgres OS user when we are root).
    #[allow(
        unsafe_code,
        reason = "geteuid(2) has no safe wrapper in the dependencies"
    )]
    pub async fn pg_ctl(&self, args: &str) -> bool {
        let bin = pgtenant::pgcluster::find_bindir().unwrap().join("pg_ctl");
        let data = self.cluster.data_dir();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            tokio::process::Command::new(&bin)
        };
        cmd.arg("-D")
            .arg(data)
            .arg("-l")
            .arg(data.join("server.log"));
        cmd.args(args.split(' '))
            .current_dir(data.parent().unwrap());
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        matches!(cmd.status().await, Ok(s) if s.success())
    }
}
