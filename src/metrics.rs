//! Prometheus metrics. Each family is registered once into a registry the caller owns (no
//! globals, so tests can scrape a fresh one), and hot-path handles are resolved up front.
//! Labels are bounded: pool names from the config, fixed reason strings; never SQL, client
//! addresses or secrets.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All process-wide metric families.
pub struct Metrics {
    pub registry: Registry,
    /// `pgtenant_client_connections{state}`, counted from the registries at scrape time.
    pub client_states: Arc<crate::registry::StateCollector>,
    pub auth_attempts: IntCounterVec,
    pub context_injections: IntCounter,
    /// Verified mode: transactions whose backend already held the tenant's context.
    pub context_carried: IntCounter,
    /// Verified mode: backends emptied (as by DISCARD ALL) because another tenant used them last.
    pub context_switches: IntCounter,
    pub deferred_begins: IntCounter,
    pub context_rejections: IntCounterVec,
    pub protocol_errors: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub tls_cert_expiry: IntGaugeVec,
    pub client_rejections: IntCounterVec,
    pub client_timeouts: IntCounterVec,
    pub client_received_bytes: IntCounter,
    pub client_sent_bytes: IntCounter,
    /// The guard's verdict cache: texts remembered, and their bytes (bounded, see
    /// `policy::cache`): what makes pgtenant's memory grow after warm-up.
    pub sql_cache_entries: IntGauge,
    pub sql_cache_bytes: IntGauge,
    server_errors: IntCounterVec,
    /// One counter per SQLSTATE class, resolved lazily ("other" for malformed codes).
    error_classes: dashmap::DashMap<[u8; 2], IntCounter>,
    backend_connections: IntGaugeVec,
    pool_size: IntGaugeVec,
    backend_up: IntGaugeVec,
    transaction_seconds: HistogramVec,
    statement_hits: IntCounterVec,
    statement_misses: IntCounterVec,
    pool_waiting: IntGaugeVec,
    backend_opened: IntCounterVec,
    backend_closed: IntCounterVec,
    backend_connect_errors: IntCounterVec,
    checkout_timeouts: IntCounterVec,
    wait_seconds: HistogramVec,
    transactions: IntCounterVec,
    queries: IntCounterVec,
    statement_evictions: IntCounterVec,
    pinned_backends: IntGaugeVec,
    pins: IntCounterVec,
    handoffs: IntCounterVec,
    holds: IntCounterVec,
}

/// Pre-resolved handles for one pool, so the hot path never hashes label values.
#[derive(Clone)]
pub struct PoolMetrics {
    pub active: IntGauge,
    pub idle: IntGauge,
    pub waiting: IntGauge,
    pub opened: IntCounter,
    pub closed: IntCounter,
    pub connect_errors: IntCounter,
    pub checkout_timeouts: IntCounter,
    pub wait_seconds: Histogram,
    pub transactions: IntCounter,
    pub transaction_seconds: Histogram,
    pub queries: IntCounter,
    pub statement_hits: IntCounter,
    pub statement_misses: IntCounter,
    pub statement_evictions: IntCounter,
    pub size: IntGauge,
    pub up: IntGauge,
    /// Server connections pinned to one client (session state kept).
    pub pinned: IntGauge,
    /// Pins made, and pins refused at the cap (`outcome` label).
    pub pins: IntCounter,
    pub pins_refused: IntCounter,
    /// Released backends handed straight to a waiting client of the same tenant.
    pub handoffs: IntCounter,
    /// Released backends held for their tenant's next checkout (`affinity_hold`).
    pub holds: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are static and unique, so registration cannot fail.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// Creates and registers every family.
    #[allow(
        clippy::too_many_lines,
        reason = "one declarative entry per family; splitting it would scatter the list"
    )]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let build = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("pgtenant_build_info", "Build information."),
                &["version"],
            )
            .expect("valid metric"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            client_states: {
                let c = Arc::new(crate::registry::StateCollector::default());
                r.register(Box::new(SharedCollector(c.clone())))
                    .expect("valid metric");
                c
            },
            client_rejections: counter(
                "pgtenant_client_connections_rejected_total",
                "Client connections refused by a limit, by reason.",
                &["reason"],
            ),
            client_timeouts: counter(
                "pgtenant_client_timeouts_total",
                "Clients disconnected by a timeout, by kind.",
                &["kind"],
            ),
            sql_cache_entries: reg(
                &r,
                IntGauge::new(
                    "pgtenant_sql_verdict_cache_entries",
                    "SQL texts whose guard verdict is remembered.",
                )
                .expect("valid metric"),
            ),
            sql_cache_bytes: reg(
                &r,
                IntGauge::new(
                    "pgtenant_sql_verdict_cache_bytes",
                    "Memory held by the guard's verdict cache: its texts (at most 4 MiB) and its table.",
                )
                .expect("valid metric"),
            ),
            client_received_bytes: reg(
                &r,
                IntCounter::new(
                    "pgtenant_client_received_bytes_total",
                    "Bytes received from authenticated clients.",
                )
                .expect("valid metric"),
            ),
            client_sent_bytes: reg(
                &r,
                IntCounter::new(
                    "pgtenant_client_sent_bytes_total",
                    "Bytes sent to authenticated clients.",
                )
                .expect("valid metric"),
            ),
            server_errors: counter(
                "pgtenant_server_errors_total",
                "ErrorResponses relayed to clients, by SQLSTATE class (first two characters).",
                &["class"],
            ),
            error_classes: dashmap::DashMap::new(),
            pool_size: gauge(
                "pgtenant_pool_size",
                "Configured maximum backend connections.",
                &["pool"],
            ),
            backend_up: gauge(
                "pgtenant_backend_up",
                "1 when the last attempt to connect to the pool's server succeeded.",
                &["pool"],
            ),
            transaction_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "pgtenant_transaction_duration_seconds",
                        "Time a transaction held its backend connection.",
                    )
                    .buckets(vec![
                        0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
                    ]),
                    &["pool"],
                )
                .expect("valid metric"),
            ),
            statement_hits: counter(
                "pgtenant_prepared_statement_cache_hits_total",
                "Client statements already prepared on the backend that served them.",
                &["pool"],
            ),
            statement_misses: counter(
                "pgtenant_prepared_statement_cache_misses_total",
                "Client statements that had to be prepared on the backend.",
                &["pool"],
            ),
            auth_attempts: counter(
                "pgtenant_auth_attempts_total",
                "Client authentication attempts by method, result and reason.",
                &["method", "result", "reason"],
            ),
            context_injections: reg(
                &r,
                IntCounter::new(
                    "pgtenant_context_injections_total",
                    "Transactions given the tenant context.",
                )
                .expect("valid metric"),
            ),
            context_carried: reg(
                &r,
                IntCounter::new(
                    "pgtenant_context_carried_total",
                    "Transactions whose backend already held the tenant's verified context (no enter() sent).",
                )
                .expect("valid metric"),
            ),
            context_switches: reg(
                &r,
                IntCounter::new(
                    "pgtenant_context_switches_total",
                    "Verified mode: backends emptied (as by DISCARD ALL) before a tenant other than the one that used them last.",
                )
                .expect("valid metric"),
            ),
            deferred_begins: reg(
                &r,
                IntCounter::new(
                    "pgtenant_deferred_begins_total",
                    "Plain BEGINs answered by the proxy and sent with the transaction's first statement.",
                )
                .expect("valid metric"),
            ),
            context_rejections: counter(
                "pgtenant_context_change_rejections_total",
                "Client attempts to change a protected setting, by where they came from.",
                &["source"],
            ),
            protocol_errors: counter(
                "pgtenant_client_protocol_errors_total",
                "Client connections closed for protocol violations.",
                &["reason"],
            ),
            config_reloads: counter(
                "pgtenant_config_reloads_total",
                "Configuration and TLS reloads by result.",
                &["result"],
            ),
            tls_handshakes: counter(
                "pgtenant_tls_handshakes_total",
                "Client TLS handshakes by result.",
                &["result"],
            ),
            tls_cert_expiry: gauge(
                "pgtenant_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the served TLS certificate.",
                &["listener"],
            ),
            backend_connections: gauge(
                "pgtenant_backend_connections",
                "Backend connections by pool and state.",
                &["pool", "state"],
            ),
            pool_waiting: gauge(
                "pgtenant_pool_waiting_clients",
                "Clients waiting for a backend connection.",
                &["pool"],
            ),
            backend_opened: counter(
                "pgtenant_backend_connections_opened_total",
                "Backend connections opened.",
                &["pool"],
            ),
            backend_closed: counter(
                "pgtenant_backend_connections_closed_total",
                "Backend connections closed.",
                &["pool"],
            ),
            backend_connect_errors: counter(
                "pgtenant_backend_connect_errors_total",
                "Failed attempts to open a backend connection.",
                &["pool"],
            ),
            checkout_timeouts: counter(
                "pgtenant_pool_checkout_timeouts_total",
                "Clients that gave up waiting for a backend connection.",
                &["pool"],
            ),
            wait_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "pgtenant_pool_checkout_wait_seconds",
                        "Time to obtain a backend connection.",
                    )
                    .buckets(vec![
                        0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
                    ]),
                    &["pool"],
                )
                .expect("valid metric"),
            ),
            transactions: counter(
                "pgtenant_transactions_total",
                "Transactions completed.",
                &["pool"],
            ),
            queries: counter(
                "pgtenant_queries_total",
                "Query and Execute messages forwarded.",
                &["pool"],
            ),
            statement_evictions: counter(
                "pgtenant_prepared_statement_evictions_total",
                "Client statements closed on a backend to stay within the cache size.",
                &["pool"],
            ),
            pinned_backends: gauge(
                "pgtenant_pinned_backends",
                "Server connections pinned to one client because it keeps session state.",
                &["pool"],
            ),
            pins: counter(
                "pgtenant_pins_total",
                "Clients pinned to their server connection (outcome=pinned), or refused or cleaned because a pin cap was reached (outcome=cap).",
                &["pool", "outcome"],
            ),
            handoffs: counter(
                "pgtenant_pool_affinity_handoffs_total",
                "Released backends handed straight to a waiting client of the tenant they served (verified mode), ahead of its turn: no tenant switch.",
                &["pool"],
            ),
            holds: counter(
                "pgtenant_pool_affinity_holds_total",
                "Released backends kept for their tenant's next checkout while other tenants' clients waited (verified mode, affinity_hold); one its tenant took counts as a hand-over.",
                &["pool"],
            ),
            registry: r,
        }
    }

    /// Handles for one pool.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        PoolMetrics {
            active: self
                .backend_connections
                .with_label_values(&[pool, "active"]),
            idle: self.backend_connections.with_label_values(&[pool, "idle"]),
            waiting: self.pool_waiting.with_label_values(&[pool]),
            opened: self.backend_opened.with_label_values(&[pool]),
            closed: self.backend_closed.with_label_values(&[pool]),
            connect_errors: self.backend_connect_errors.with_label_values(&[pool]),
            checkout_timeouts: self.checkout_timeouts.with_label_values(&[pool]),
            wait_seconds: self.wait_seconds.with_label_values(&[pool]),
            transactions: self.transactions.with_label_values(&[pool]),
            transaction_seconds: self.transaction_seconds.with_label_values(&[pool]),
            queries: self.queries.with_label_values(&[pool]),
            statement_hits: self.statement_hits.with_label_values(&[pool]),
            statement_misses: self.statement_misses.with_label_values(&[pool]),
            statement_evictions: self.statement_evictions.with_label_values(&[pool]),
            size: self.pool_size.with_label_values(&[pool]),
            up: self.backend_up.with_label_values(&[pool]),
            pinned: self.pinned_backends.with_label_values(&[pool]),
            pins: self.pins.with_label_values(&[pool, "pinned"]),
            pins_refused: self.pins.with_label_values(&[pool, "cap"]),
            handoffs: self.handoffs.with_label_values(&[pool]),
            holds: self.holds.with_label_values(&[pool]),
        }
    }

    /// Counts an ErrorResponse by the class of its SQLSTATE.
    pub fn server_error(&self, code: &[u8]) {
        let class = match code {
            [a, b, ..] if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => [*a, *b],
            _ => *b"??",
        };
        if let Some(c) = self.error_classes.get(&class) {
            c.inc();
            return;
        }
        let label = if class == *b"??" {
            "other".to_string()
        } else {
            String::from_utf8_lossy(&class).to_ascii_uppercase()
        };
        let c = self.server_errors.with_label_values(&[&label]);
        c.inc();
        self.error_classes.insert(class, c);
    }

    /// Counts one authentication attempt.
    pub fn auth(&self, method: &str, ok: bool, reason: &str) {
        let result = if ok { "success" } else { "failure" };
        self.auth_attempts
            .with_label_values(&[method, result, reason])
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A collector shared with its owner (the registry takes its collectors boxed).
struct SharedCollector<C>(Arc<C>);

impl<C: prometheus::core::Collector> prometheus::core::Collector for SharedCollector<C> {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}
