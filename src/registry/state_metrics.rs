//! `pgtenant_client_connections{state}`, counted at scrape time from the registries.
//! Keeping a gauge per state current meant two writes to process-wide atomics at every
//! state change, and a client changes state twice per statement inside a transaction.

use std::sync::{Arc, Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::{ClientState, Registry};

const NAME: &str = "pgtenant_client_connections";
const HELP: &str = "Client connections by state.";

/// Counts the clients of every registry added (a process may run several servers on one
/// metrics registry, e.g. in tests), by state, when scraped.
pub struct StateCollector {
    registries: Mutex<Vec<Weak<Registry>>>,
    desc: Desc,
}

impl Default for StateCollector {
    fn default() -> Self {
        StateCollector {
            registries: Mutex::default(),
            desc: Desc::new(
                NAME.into(),
                HELP.into(),
                vec!["state".into()],
                Default::default(),
            )
            .expect("valid metric"),
        }
    }
}

impl StateCollector {
    /// Counts `registry`'s clients from now on (until it is dropped).
    pub fn add(&self, registry: &Arc<Registry>) {
        let mut all = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|r| r.strong_count() > 0);
        all.push(Arc::downgrade(registry));
    }

    /// Clients per state, in [`ClientState::ALL`] order.
    pub fn counts(&self) -> [u64; ClientState::ALL.len()] {
        let mut counts = [0u64; ClientState::ALL.len()];
        let all = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        for r in all.iter().filter_map(Weak::upgrade) {
            for c in r.clients.iter() {
                counts[c.state() as usize] += 1;
            }
        }
        counts
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use prometheus::proto::{Gauge, LabelPair, Metric, MetricType};
        let counts = self.counts();
        let mut mf = MetricFamily::default();
        mf.set_name(NAME.into());
        mf.set_help(HELP.into());
        mf.set_field_type(MetricType::GAUGE);
        let metrics = ClientState::ALL
            .iter()
            .map(|s| {
                let mut m = Metric::default();
                let mut l = LabelPair::default();
                l.set_name("state".into());
                l.set_value(s.label().into());
                m.set_label(vec![l]);
                let mut g = Gauge::default();
                g.set_value(counts[*s as usize] as f64);
                m.set_gauge(g);
                m
            })
            .collect();
        mf.set_metric(metrics);
        vec![mf]
    }
}
