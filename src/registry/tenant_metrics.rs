//! Per-tenant metric families, built at scrape time from the registry's tenant counters,
//! with the label cardinality capped at the most active tenants.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use super::TenantStats;

/// Scrape-time per-tenant families: the `top` tenants by activity keep their own label
/// value, all others are summed into `tenant="other"`. A tenant can move in and out of the
/// top set, so `other` is a counter that may reset; rate() treats that as a reset.
pub struct TenantCollector {
    tenants: Arc<DashMap<String, Arc<TenantStats>>>,
    top: Arc<AtomicUsize>,
    descs: Vec<prometheus::core::Desc>,
}

const TENANT_FAMILIES: [(&str, &str, bool); 5] = [
    (
        "pgtenant_tenant_client_connections",
        "Connected clients per tenant (top tenants; the rest as other).",
        false,
    ),
    (
        "pgtenant_tenant_backend_connections",
        "Backend connections held per tenant.",
        false,
    ),
    (
        "pgtenant_tenant_transactions_total",
        "Transactions per tenant.",
        true,
    ),
    (
        "pgtenant_tenant_checkout_wait_seconds_total",
        "Time per tenant spent waiting for a backend connection.",
        true,
    ),
    (
        "pgtenant_tenant_errors_total",
        "Errors sent to each tenant's clients.",
        true,
    ),
];

impl TenantCollector {
    pub(super) fn new(
        tenants: Arc<DashMap<String, Arc<TenantStats>>>,
        top: Arc<AtomicUsize>,
    ) -> TenantCollector {
        let descs = TENANT_FAMILIES
            .iter()
            .map(|(name, help, _)| {
                prometheus::core::Desc::new(
                    name.to_string(),
                    help.to_string(),
                    vec!["tenant".into()],
                    Default::default(),
                )
                .expect("valid metric")
            })
            .collect();
        TenantCollector {
            tenants,
            top,
            descs,
        }
    }

    fn values(s: &TenantStats) -> [f64; 5] {
        [
            s.connections.load(Ordering::Relaxed) as f64,
            s.backends.load(Ordering::Relaxed) as f64,
            s.transactions.load(Ordering::Relaxed) as f64,
            s.wait_us.load(Ordering::Relaxed) as f64 / 1e6,
            s.errors.load(Ordering::Relaxed) as f64,
        ]
    }
}

impl prometheus::core::Collector for TenantCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
        let mut ranked: Vec<(String, [f64; 5], u64)> = self
            .tenants
            .iter()
            .map(|e| {
                (
                    e.key().clone(),
                    Self::values(e.value()),
                    e.value().activity(),
                )
            })
            .collect();
        ranked.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        let top = self.top.load(Ordering::Relaxed);
        let mut rows: Vec<(String, [f64; 5])> = Vec::new();
        let mut other = [0.0; 5];
        for (i, (name, v, _)) in ranked.into_iter().enumerate() {
            if i < top && name != "other" {
                rows.push((name, v));
            } else {
                for (o, x) in other.iter_mut().zip(v) {
                    *o += x;
                }
            }
        }
        rows.push(("other".into(), other));
        TENANT_FAMILIES
            .iter()
            .enumerate()
            .map(|(k, (name, help, counter))| {
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(help.to_string());
                mf.set_field_type(if *counter {
                    MetricType::COUNTER
                } else {
                    MetricType::GAUGE
                });
                let metrics = rows
                    .iter()
                    .map(|(tenant, v)| {
                        let mut m = Metric::default();
                        let mut l = LabelPair::default();
                        l.set_name("tenant".into());
                        l.set_value(tenant.clone());
                        m.set_label(vec![l]);
                        if *counter {
                            let mut c = Counter::default();
                            c.set_value(v[k]);
                            m.set_counter(c);
                        } else {
                            let mut g = Gauge::default();
                            g.set_value(v[k]);
                            m.set_gauge(g);
                        }
                        m
                    })
                    .collect();
                mf.set_metric(metrics);
                mf
            })
            .collect()
    }
}
