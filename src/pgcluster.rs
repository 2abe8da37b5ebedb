//! A throwaway local PostgreSQL cluster for `pgtenant demo` and integration tests.
//!
//! The cluster lives in a fresh directory under the system temp dir, listens only on
//! 127.0.0.1 (plus a Unix socket inside that directory), and is stopped and deleted
//! when the [`TempCluster`] is stopped or dropped. As root, every server-side command
//! runs as the `postgres` OS user through `runuser`, because initdb refuses root.
//! The superuser password is only ever written to a 0600 file (deleted after initdb)
//! or passed through the environment; it is never logged or put on a command line.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Options for a throwaway cluster.
#[derive(Clone)]
pub struct ClusterOptions {
    /// Password for the `postgres` superuser over TCP (scram-sha-256).
    pub superuser_password: String,
    /// Extra postgresql.conf settings, e.g. `("ssl", "on")`; values are quoted for you.
    pub extra_conf: Vec<(String, String)>,
    /// Files (path relative to the data dir, contents) written before start, mode 0600.
    pub extra_files: Vec<(String, Vec<u8>)>,
}

impl Default for ClusterOptions {
    /// Password "postgres" and no extra settings or files: enough for most tests.
    fn default() -> Self {
        Self {
            superuser_password: "postgres".to_owned(),
            extra_conf: Vec::new(),
            extra_files: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ClusterOptions {
    /// Hand-written so the password and file contents (e.g. a TLS key) are never logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<&String> = self.extra_files.iter().map(|(name, _)| name).collect();
        f.debug_struct("ClusterOptions")
            .field("superuser_password", &"<redacted>")
            .field("extra_conf", &self.extra_conf)
            .field("extra_files", &files)
            .finish()
    }
}

/// Why a throwaway cluster could not be created, queried or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No directory with both `initdb` and `pg_ctl` was found.
    #[error("PostgreSQL server binaries not found (set PGTENANT_PG_BINDIR or install postgresql)")]
    NoBinaries,
    /// A filesystem or process-spawn error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A helper command ran but exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    /// A helper command did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server did not come up; carries the end of its log for diagnosis.
    #[error("PostgreSQL failed to start: {detail}\n--- server.log (last 30 lines) ---\n{log_tail}")]
    Start { detail: String, log_tail: String },
    /// Running as root, but the `postgres` OS user could not be resolved.
    #[error("running as root but OS user `postgres` was not found: {0}")]
    NoRunUser(String),
    /// An option was unusable (e.g. an extra file path escaping the data dir).
    #[error("invalid cluster option: {0}")]
    InvalidOption(String),
}

/// A running throwaway cluster; stopped and deleted on Drop.
pub struct TempCluster {
    root: PathBuf,
    data: PathBuf,
    bindir: PathBuf,
    port: u16,
    password: String,
    /// `Some((uid, gid))` of `postgres` when we are root and must `runuser`.
    run_as: Option<(u32, u32)>,
    stopped: bool,
}

const HOST: &str = "127.0.0.1";
const START_ATTEMPTS: u32 = 3;
/// psql flags: stop at the first error, no ~/.psqlrc, quiet, never prompt, script on stdin.
const PSQL_ARGS: &str = "-v ON_ERROR_STOP=1 -X -q -w -U postgres -f - -p";
/// Client environment that could redirect or alter psql's connection.
const PSQL_ENV_DROP: &str = "PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGPASSFILE PGHOSTADDR";
/// Fixed settings: fast and disposable (no durability), room for many pooled connections.
const BASE_CONF: &str = "\
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = '64MB'
logging_collector = off
password_encryption = 'scram-sha-256'
";

impl TempCluster {
    /// initdb into a fresh temp dir, pick a free TCP port on 127.0.0.1, configure, start, and wait until it accepts connections.
    pub async fn start(opts: ClusterOptions) -> Result<TempCluster, ClusterError> {
        let bindir = find_bindir()?;
        let name = format!("pgtenant-pg-{:016x}", rand::random::<u64>());
        let root = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&root)?;
        // From here on, Drop cleans up whatever an early return leaves behind.
        let mut c = TempCluster {
            data: root.join("data"),
            root,
            bindir,
            port: 0,
            password: opts.superuser_password.clone(),
            run_as: None,
            stopped: false,
        };
        // A new directory is owned by our effective uid: 0 means root (no unsafe geteuid).
        if std::fs::metadata(&c.root)?.uid() == 0 {
            c.run_as = Some(postgres_ids()?);
            c.chown(&c.root)?;
        }
        c.initdb().await?;
        c.configure(&opts.extra_files)?;
        c.start_with_retries(&opts.extra_conf).await?;
        Ok(c)
    }

    /// TCP port the server listens on, for connection strings.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on ("127.0.0.1"), for connection strings.
    pub fn host(&self) -> &str {
        HOST
    }

    /// Data directory, e.g. to read `server.log` when a test fails.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Superuser password, so callers can connect as `postgres` over TCP.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// Run SQL (may be many statements) as the superuser via `psql -v ON_ERROR_STOP=1 -X -q`, in database `db`; returns stdout.
    pub async fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        let local = self.bindir.join("psql");
        let mut cmd = Command::new(Some(local).filter(|p| p.is_file()).unwrap_or("psql".into()));
        cmd.args(PSQL_ARGS.split(' ')).arg(self.port.to_string());
        cmd.arg("-d").arg(db).arg("-h").arg(HOST);
        // The password goes only into the child's environment, never onto its command line.
        cmd.env("PGPASSWORD", &self.password);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        for var in PSQL_ENV_DROP.split(' ') {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        cmd.stderr(Stdio::piped()).current_dir(&self.root);
        let label = format!("psql -d {db}");
        let mut child = cmd.kill_on_drop(true).spawn()?;
        let mut stdin = child.stdin.take();
        let write = async move {
            if let Some(s) = stdin.as_mut() {
                // A write error means psql exited early; its stderr says why.
                let _ = s.write_all(sql.as_bytes()).await;
                let _ = s.shutdown().await;
            }
            drop(stdin); // EOF, so psql finishes the script
        };
        let run = async { tokio::join!(write, child.wait_with_output()).1 };
        let out = tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .map_err(|_| ClusterError::Timeout(label.clone()))??;
        check(&label, &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stop the server (fast mode) and delete the directory; also done by Drop (synchronously, best effort, must not panic).
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        let mut cmd = self.pg("pg_ctl");
        cmd.args("-m fast -w -t 60 stop".split(' '));
        run(cmd, "pg_ctl stop", 90).await?;
        self.stopped = true;
        tokio::fs::remove_dir_all(&self.root).await?;
        Ok(())
    }

    async fn initdb(&self) -> Result<(), ClusterError> {
        let pwfile = self.root.join("pwfile");
        self.write_private(&pwfile, format!("{}\n", self.password).as_bytes())?;
        let mut pwarg = OsString::from("--pwfile=");
        pwarg.push(&pwfile);
        let mut cmd = self.pg("initdb");
        let args = "--auth-local=trust --auth-host=scram-sha-256 -U postgres -E UTF8 --locale=C -N";
        cmd.args(args.split(' ')).arg(pwarg);
        let res = run(cmd, "initdb", 180).await;
        let _ = std::fs::remove_file(&pwfile);
        res.map(drop)
    }

    /// One-time setup after initdb: include our conf file, check pg_hba, write extra files.
    fn configure(&self, extra_files: &[(String, Vec<u8>)]) -> Result<(), ClusterError> {
        use std::io::Write;
        let append = |p: &Path| std::fs::OpenOptions::new().append(true).open(p);
        // Per-attempt settings (the port) live in an included file rewritten on each try.
        let mut conf = append(&self.data.join("postgresql.conf"))?;
        writeln!(conf, "\n# added by pgtenant\ninclude = 'pgtenant.conf'")?;
        let hba_path = self.data.join("pg_hba.conf");
        let wanted = ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"];
        let hba = std::fs::read_to_string(&hba_path)?;
        if !hba.lines().any(|l| l.split_whitespace().eq(wanted)) {
            writeln!(append(&hba_path)?, "{}", wanted.join(" "))?;
        }
        for (name, contents) in extra_files {
            let rel = Path::new(name);
            if name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(ClusterError::InvalidOption(format!("extra file {name:?}")));
            }
            let path = self.data.join(rel);
            if let Some(parent) = path.parent().filter(|p| !p.exists()) {
                std::fs::create_dir_all(parent)?;
                self.chown(parent)?;
            }
            self.write_private(&path, contents)?;
        }
        Ok(())
    }

    fn write_conf(&self, extra: &[(String, String)]) -> Result<(), ClusterError> {
        let mut text = format!("# generated by pgtenant\nlisten_addresses = '{HOST}'\n");
        text += &format!("port = {}\n", self.port);
        let sock = quote(&self.root.to_string_lossy());
        text += &format!("unix_socket_directories = {sock}\n{BASE_CONF}");
        for (k, v) in extra {
            let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
            if k.is_empty() || !k.chars().all(ok) {
                return Err(ClusterError::InvalidOption(format!("setting {k:?}")));
            }
            text += &format!("{k} = {}\n", quote(v));
        }
        self.write_private(&self.data.join("pgtenant.conf"), text.as_bytes())
    }

    async fn start_with_retries(&mut self, extra: &[(String, String)]) -> Result<(), ClusterError> {
        let log = self.data.join("server.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = free_port()?;
            self.write_conf(extra)?;
            let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut cmd = self.pg("pg_ctl");
            cmd.arg("-l").arg(&log).args("-w -t 60 start".split(' '));
            // -w: pg_ctl returns once the server reports it accepts connections.
            let detail = match run(cmd, "pg_ctl start", 90).await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            let log_tail = log_tail(&log, log_start, 30);
            self.kill_server();
            let port_taken = log_tail.contains("could not bind") || log_tail.contains("in use");
            if !port_taken || attempt >= START_ATTEMPTS {
                return Err(ClusterError::Start { detail, log_tail });
            }
            tracing::warn!(port = self.port, attempt, "cluster port taken; retrying");
        }
    }

    /// A server-binary command with `-D <data>`, via `runuser -u postgres --` when root.
    fn pg(&self, prog: &str) -> StdCommand {
        let bin = self.bindir.join(prog);
        let runuser = self.run_as.is_some();
        let mut cmd = StdCommand::new(if runuser { Path::new("runuser") } else { &bin });
        if runuser {
            cmd.args(["-u", "postgres", "--"]).arg(&bin);
        }
        cmd.arg("-D").arg(&self.data);
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    /// Write a file with mode 0600, owned by the run user.
    fn write_private(&self, path: &Path, contents: &[u8]) -> Result<(), ClusterError> {
        // Our root dir is 0700, so nobody else can read the file before the chmod.
        std::fs::write(path, contents)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        self.chown(path)
    }

    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Synchronous immediate stop if a postmaster may be running; errors ignored.
    fn kill_server(&self) {
        if self.data.join("postmaster.pid").exists() {
            let mut cmd = self.pg("pg_ctl");
            cmd.args("-m immediate -w -t 30 stop".split(' '));
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if !self.stopped {
            self.kill_server();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Locate PostgreSQL server binaries: $PGTENANT_PG_BINDIR, then `pg_config --bindir`, then the highest /usr/lib/postgresql/*/bin containing initdb, then PATH.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("PGTENANT_PG_BINDIR").map(PathBuf::from) {
        // A wrong explicit override fails loudly instead of silently falling through.
        return has_server(&d).then_some(d).ok_or(ClusterError::NoBinaries);
    }
    let pg_config = StdCommand::new("pg_config").arg("--bindir").output().ok();
    let pg_config = pg_config.filter(|o| o.status.success());
    let pg_config = pg_config.map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let version = |p: &PathBuf| -> Vec<u32> {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.split('.').map(|s| s.parse().unwrap_or(0)).collect()
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    dirs.sort_by_key(|p| std::cmp::Reverse(version(p)));
    let versioned = dirs.iter().map(|v| v.join("bin"));
    // On PATH initdb may be a symlink (e.g. /usr/local/bin/initdb): use its real dir.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path)
        .filter_map(|d| std::fs::canonicalize(d.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf));
    let mut candidates = pg_config.into_iter().chain(versioned).chain(on_path);
    candidates
        .find(|d| has_server(d))
        .ok_or(ClusterError::NoBinaries)
}

/// uid/gid of the `postgres` OS user, via `id`.
fn postgres_ids() -> Result<(u32, u32), ClusterError> {
    let id = |flag: &str| -> Result<u32, ClusterError> {
        let out = StdCommand::new("id").args([flag, "postgres"]).output()?;
        let id = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        let err = || ClusterError::NoRunUser(String::from_utf8_lossy(&out.stderr).trim().into());
        id.filter(|_| out.status.success()).ok_or_else(err)
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind((HOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A postgresql.conf string literal.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Run a helper command with a time limit; error (with its output) unless it succeeds.
async fn run(cmd: StdCommand, label: &str, secs: u64) -> Result<Output, ClusterError> {
    let mut cmd = Command::from(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(secs), cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| ClusterError::Timeout(format!("{label} after {secs}s")))??;
    check(label, &out)?;
    Ok(out)
}

fn check(label: &str, out: &Output) -> Result<(), ClusterError> {
    if out.status.success() {
        return Ok(());
    }
    let text = [&out.stderr[..], &out.stdout[..]].concat();
    let stderr = String::from_utf8_lossy(&text).trim().to_owned();
    Err(ClusterError::Command {
        cmd: label.to_owned(),
        status: out.status.to_string(),
        stderr,
    })
}

/// Last `n` lines of the log written since byte offset `from`.
fn log_tail(path: &Path, from: u64, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
