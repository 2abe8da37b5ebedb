//! Prometheus metrics. Each family is registered once into a registry the caller owns (no
//! globals, so tests can scrape a fresh one), and hot-path handles are resolved up front.
//! Labels are bounded: pool names from the config, fixed reason strings; never SQL, client
//! addresses or secrets.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All process-wide metric families.
pub struct Metrics {
    pub registry: Registry,
    pub client_connections: IntGaugeVec,
    pub auth_attempts: IntCounterVec,
    pub context_injections: IntCounter,
    pub context_rejections: IntCounterVec,
    pub protocol_errors: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub tls_cert_expiry: IntGaugeVec,
    backend_connections: IntGaugeVec,
    pool_waiting: IntGaugeVec,
    backend_opened: IntCounterVec,
    backend_closed: IntCounterVec,
    backend_connect_errors: IntCounterVec,
    checkout_timeouts: IntCounterVec,
    wait_seconds: HistogramVec,
    transactions: IntCounterVec,
    queries: IntCounterVec,
    statement_evictions: IntCounterVec,
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
    pub queries: IntCounter,
    pub statement_evictions: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are static and unique, so registration cannot fail.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// Creates and registers every family.
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
            client_connections: gauge(
                "pgtenant_client_connections",
                "Client connections by state.",
                &["state"],
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
            queries: self.queries.with_label_values(&[pool]),
            statement_evictions: self.statement_evictions.with_label_values(&[pool]),
        }
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

/// A client-connection gauge that decrements itself when dropped, so a panicking or
/// cancelled task cannot leave the count high.
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    /// Increments `gauge` until the guard is dropped.
    pub fn new(gauge: IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
