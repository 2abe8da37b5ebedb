//! Who is connected: one entry per client (for the admin console, KILL and per-tenant
//! limits) and per-tenant activity counters (for per-tenant metrics with a cardinality cap).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use crate::signal::SessionSignal;
pub use state_metrics::StateCollector;
use std::time::SystemTime;
pub use tenant_metrics::TenantCollector;
pub use tenant_stats::{BackendSlot, TenantStats};

use dashmap::DashMap;

use crate::cancel::{CancelSecret, CancelSlot};

mod state_metrics;
mod tenant_metrics;
mod tenant_stats;

/// What a client is doing right now, as PgBouncer and pg_stat_activity would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ClientState {
    /// Connected, not yet authenticated.
    Authenticating = 0,
    /// Authenticated, no transaction open.
    Idle = 1,
    /// A request is being served by a backend.
    Active = 2,
    /// Waiting for a backend connection.
    Waiting = 3,
    /// Holds a backend inside a transaction and the backend waits for the client.
    IdleInTransaction = 4,
}

impl ClientState {
    /// Every state, in label order.
    pub const ALL: [ClientState; 5] = [
        ClientState::Authenticating,
        ClientState::Idle,
        ClientState::Active,
        ClientState::Waiting,
        ClientState::IdleInTransaction,
    ];

    /// The metric label and admin-console name.
    pub fn label(self) -> &'static str {
        match self {
            ClientState::Authenticating => "authenticating",
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
            ClientState::IdleInTransaction => "idle_in_transaction",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        ClientState::ALL
            .get(v as usize)
            .copied()
            .unwrap_or(ClientState::Idle)
    }
}

/// One connected client.
#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    /// The cancel key the client is given (BackendKeyData), random so that one tenant
    /// cannot guess another's; the pid is the entry's key in the registry.
    pub cancel_pid: i32,
    cancel_secret: CancelSecret,
    pub addr: SocketAddr,
    pub connected_at: SystemTime,
    state: AtomicU8,
    /// When the state last changed, in milliseconds since the Unix epoch.
    state_since_ms: AtomicU64,
    identity: std::sync::OnceLock<Identity>,
    /// KILL and shutdown requests; wakes the client's session.
    pub signal: SessionSignal,
    /// Backend connection id while one is attached (0: none).
    pub backend: AtomicU64,
    /// The client keeps session state, so its backend stays with it (SHOW CLIENTS).
    pub pinned: std::sync::atomic::AtomicBool,
    /// The backend a cancel request for this client goes to.
    pub cancel: CancelSlot,
}

/// What a client authenticated as (small: one per connected client).
#[derive(Debug)]
pub struct Identity {
    /// Tenant, user and database, shared by every client that has the same three
    /// ([`Registry::names`]): one copy per combination, not per client.
    pub names: Arc<Names>,
    pub application_name: Box<str>,
    pub stats: Arc<TenantStats>,
}

/// The names a client authenticated with; one shared copy per combination.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Names {
    pub tenant: Arc<str>,
    pub user: Arc<str>,
    pub database: Arc<str>,
}

impl ClientEntry {
    /// The secret half of the client's cancel key (sent to the client only).
    pub fn cancel_secret(&self) -> i32 {
        self.cancel_secret.0
    }

    /// The client's state now.
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// When the client entered its current state.
    pub fn state_since(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + std::time::Duration::from_millis(self.state_since_ms.load(Ordering::Relaxed))
    }

    /// Tenant, user and database, once authenticated.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.get()
    }

    /// True once KILL (or a tenant's removal) asked the session to end.
    pub fn is_killed(&self) -> bool {
        self.signal.raised() & SessionSignal::KILL != 0
    }

    /// Asks the session to end now.
    pub fn kill(&self) {
        self.signal.raise(SessionSignal::KILL);
    }
}

/// Every connected client and every tenant's counters.
pub struct Registry {
    /// By cancel pid (one map serves SHOW CLIENTS, KILL and cancel requests).
    clients: DashMap<i32, Arc<ClientEntry>>,
    tenants: Arc<DashMap<String, Arc<TenantStats>>>,
    next_id: AtomicU64,
    names: Mutex<std::collections::HashSet<Arc<str>>>,
    combinations: Mutex<std::collections::HashSet<Arc<Names>>>,
    /// Connections in the order they arrived, with when: the front is the oldest one
    /// still in start-up (those that finished are dropped from the front as it moves).
    /// (cancel pid, id, when): the pid finds the entry, the id tells it from a later
    /// connection given the same pid.
    startups: Mutex<std::collections::VecDeque<(i32, u64, std::time::Instant)>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry (its clients are counted by state at scrape time:
    /// [`StateCollector`]).
    pub fn new() -> Registry {
        Registry {
            clients: DashMap::new(),
            tenants: Arc::new(DashMap::new()),
            next_id: AtomicU64::new(1),
            names: Default::default(),
            combinations: Default::default(),
            startups: Default::default(),
        }
    }

    /// Registers a new connection (authenticating); it leaves the registry when the
    /// handle is dropped.
    pub fn connect(self: &Arc<Self>, addr: SocketAddr) -> ClientHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid == 0 {
                continue;
            }
            if let dashmap::Entry::Vacant(v) = self.clients.entry(pid) {
                let entry = Arc::new(ClientEntry {
                    id,
                    cancel_pid: pid,
                    cancel_secret: CancelSecret(rand::random()),
                    addr,
                    connected_at: SystemTime::now(),
                    state: AtomicU8::new(ClientState::Authenticating as u8),
                    state_since_ms: AtomicU64::new(now_ms()),
                    identity: std::sync::OnceLock::new(),
                    signal: SessionSignal::default(),
                    backend: AtomicU64::new(0),
                    pinned: Default::default(),
                    cancel: CancelSlot::default(),
                });
                v.insert(entry.clone());
                break entry;
            }
        };
        let mut startups = self.startups.lock().unwrap_or_else(|e| e.into_inner());
        self.oldest_startup(&mut startups);
        startups.push_back((entry.cancel_pid, id, std::time::Instant::now()));
        drop(startups);
        ClientHandle {
            entry,
            registry: self.clone(),
        }
    }

    /// One shared copy of a configured name (tenant, user, database). Only names that
    /// passed authentication get here, so the set is bounded by the configuration.
    fn intern(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        names.insert(n.clone());
        n
    }

    /// One shared copy of a configured combination of tenant, user and database (bounded
    /// by the configuration like [`Self::intern`]).
    pub fn names(&self, tenant: &str, user: &str, database: &str) -> Arc<Names> {
        let wanted = Names {
            tenant: self.intern(tenant),
            user: self.intern(user),
            database: self.intern(database),
        };
        let mut all = self.combinations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = all.get(&wanted) {
            return n.clone();
        }
        let n = Arc::new(wanted);
        all.insert(n.clone());
        n
    }

    /// The counters of `tenant`, created on first use.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantStats> {
        if let Some(s) = self.tenants.get(tenant) {
            return s.clone();
        }
        self.tenants.entry(tenant.to_string()).or_default().clone()
    }

    /// A snapshot of every client, oldest first.
    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = self.clients.iter().map(|e| e.value().clone()).collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// A snapshot of every tenant's counters, by name.
    pub fn tenant_stats(&self) -> Vec<(String, Arc<TenantStats>)> {
        let mut all: Vec<_> = self
            .tenants
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Tells every session that the server is shutting down.
    pub fn shutdown_all(&self) {
        for c in self.clients.iter() {
            c.signal.raise(SessionSignal::SHUTDOWN);
        }
    }

    /// Asks every client idle for at least `idle` to leave the runtime (one sweep instead
    /// of a timer per idle period; see `crate::session::lot`).
    pub fn nudge_idle(&self, idle: std::time::Duration) {
        let before = now_ms().saturating_sub(idle.as_millis() as u64);
        for c in self.clients.iter() {
            if c.state() == ClientState::Idle
                && c.state_since_ms.load(Ordering::Relaxed) <= before
                && c.signal.raised() & SessionSignal::PARK == 0
            {
                c.signal.raise(SessionSignal::PARK);
            }
        }
    }

    /// Ends the connection that has been in start-up longest, if for at least `min_age`
    /// and it is not `me`, so a new connection can have its place
    /// (`server.startup_evict_after`); true when one was told to end.
    pub fn evict_oldest_startup(&self, min_age: std::time::Duration, me: u64) -> bool {
        let mut startups = self.startups.lock().unwrap_or_else(|e| e.into_inner());
        match self.oldest_startup(&mut startups) {
            Some((entry, since)) if entry.id != me && since.elapsed() >= min_age => {
                startups.pop_front();
                drop(startups);
                entry.kill();
                true
            }
            _ => false,
        }
    }

    /// Drops what is past start-up from the front of the start-up queue and gives back its
    /// spare room, so a burst of logins leaves no queue behind once it is over (the queue is
    /// otherwise trimmed only when the next connection comes).
    pub fn trim_startups(&self) {
        let mut startups = self.startups.lock().unwrap_or_else(|e| e.into_inner());
        self.oldest_startup(&mut startups);
        if startups.capacity() > 64 && startups.len() < startups.capacity() / 4 {
            let keep = (startups.len() * 2).max(64);
            startups.shrink_to(keep);
        }
    }

    /// The front of `startups` once every connection there that is gone or past
    /// start-up has been dropped: the oldest connection still in start-up. Each
    /// connection is pushed and dropped once, and one in start-up stays at most
    /// `server.auth_timeout`, so the queue holds about the connections of that long.
    fn oldest_startup(
        &self,
        startups: &mut std::collections::VecDeque<(i32, u64, std::time::Instant)>,
    ) -> Option<(Arc<ClientEntry>, std::time::Instant)> {
        while let Some(&(pid, id, since)) = startups.front() {
            let entry = self.clients.get(&pid).map(|e| e.value().clone());
            match entry {
                Some(e)
                    if e.id == id && e.state() == ClientState::Authenticating && !e.is_killed() =>
                {
                    return Some((e, since));
                }
                _ => {
                    startups.pop_front();
                }
            }
        }
        None
    }

    /// The client a CancelRequest carrying (pid, secret) is for, if any.
    pub fn cancel_target(&self, pid: i32, secret: i32) -> Option<Arc<ClientEntry>> {
        let entry = self.clients.get(&pid)?;
        (entry.cancel_secret == CancelSecret(secret)).then(|| entry.value().clone())
    }

    /// Kills every client of `tenant`; returns how many.
    pub fn kill_tenant(&self, tenant: &str) -> usize {
        let mut n = 0;
        for c in self.clients.iter() {
            if c.identity().is_some_and(|i| *i.names.tenant == *tenant) {
                c.kill();
                n += 1;
            }
        }
        n
    }

    /// Per-tenant metric families, folded to the `top` most active tenants plus `other`.
    pub fn tenant_collector(&self, top: Arc<AtomicUsize>) -> TenantCollector {
        TenantCollector::new(self.tenants.clone(), top)
    }
}

/// A client's registration; dropping it removes the client and its gauge contributions.
pub struct ClientHandle {
    pub entry: Arc<ClientEntry>,
    registry: Arc<Registry>,
}

impl ClientHandle {
    /// Moves the client to `state`. Its time is taken when it starts waiting, goes idle or
    /// makes a request after either, not when it goes between active and idle in
    /// transaction (twice per statement inside a transaction; SHOW CLIENTS' request_time is
    /// then when the transaction's first request came).
    pub fn set_state(&self, state: ClientState) {
        use ClientState::{Active, IdleInTransaction};
        let old = ClientState::from_u8(self.entry.state.swap(state as u8, Ordering::Relaxed));
        let in_transaction = |s| matches!(s, Active | IdleInTransaction);
        if old != state && !(in_transaction(old) && in_transaction(state)) {
            self.entry.state_since_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Records who the client authenticated as and counts it against its tenant; None when
    /// the tenant already has `limit` clients (0: no limit).
    pub fn authenticate(&self, mut identity: Identity, limit: usize) -> Option<Arc<TenantStats>> {
        let stats = self.registry.tenant(&identity.names.tenant);
        let prev = stats.connections.fetch_add(1, Ordering::AcqRel);
        if limit > 0 && prev >= limit {
            stats.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        identity.stats = stats.clone();
        if self.entry.identity.set(identity).is_err() {
            stats.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.set_state(ClientState::Idle);
        Some(stats)
    }

    /// The shared registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        if let Some(i) = self.entry.identity() {
            i.stats.connections.fetch_sub(1, Ordering::AcqRel);
        }
        self.registry.clients.remove(&self.entry.cancel_pid);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new())
    }

    fn identity(tenant: &str) -> Identity {
        Identity {
            names: Arc::new(Names {
                tenant: tenant.into(),
                user: tenant.into(),
                database: "app".into(),
            }),
            application_name: "".into(),
            stats: Arc::default(),
        }
    }

    #[test]
    fn only_connections_in_start_up_give_way_oldest_first() {
        let r = registry();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = r.connect(addr);
        let b = r.connect(addr);
        let c = r.connect(addr);
        // Too young, or the asking connection itself: nobody gives way.
        assert!(!r.evict_oldest_startup(std::time::Duration::from_secs(60), c.entry.id));
        assert!(!r.evict_oldest_startup(std::time::Duration::ZERO, a.entry.id));
        // a authenticates: b is now the oldest in start-up, and gives way.
        a.authenticate(identity("t"), 0).unwrap();
        assert!(r.evict_oldest_startup(std::time::Duration::ZERO, c.entry.id));
        assert!(b.entry.is_killed() && !a.entry.is_killed());
        // c is the only one left in start-up, and never evicts itself.
        assert!(!r.evict_oldest_startup(std::time::Duration::ZERO, c.entry.id));
        drop((a, b, c));
    }

    #[test]
    fn a_burst_of_logins_leaves_no_start_up_queue() {
        let r = registry();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let first = r.connect(addr);
        let rest: Vec<_> = (0..1000).map(|_| r.connect(addr)).collect();
        // The first is still in start-up, so the queue behind it grows.
        assert_eq!(r.startups.lock().unwrap().len(), 1001);
        drop((first, rest));
        r.trim_startups();
        let q = r.startups.lock().unwrap();
        assert!(
            q.is_empty() && q.capacity() <= 64,
            "{} / {}",
            q.len(),
            q.capacity()
        );
    }

    #[test]
    fn state_counts_follow_clients_and_drop() {
        let r = registry();
        let states = StateCollector::default();
        states.add(&r);
        let other = registry();
        states.add(&other);
        let addr = "127.0.0.1:1".parse().unwrap();
        let a = r.connect(addr);
        let b = r.connect(addr);
        let c = other.connect(addr);
        let count = |s: ClientState| states.counts()[s as usize];
        assert_eq!(count(ClientState::Authenticating), 3);
        a.authenticate(identity("acme"), 0).unwrap();
        a.set_state(ClientState::Active);
        assert_eq!(count(ClientState::Authenticating), 2);
        assert_eq!(count(ClientState::Active), 1);
        let family = states.collect();
        assert_eq!(family[0].get_metric().len(), ClientState::ALL.len());
        drop((a, b));
        drop(other);
        drop(c);
        for s in ClientState::ALL {
            assert_eq!(count(s), 0, "{s:?}");
        }
        assert!(r.clients().is_empty());
        assert_eq!(r.tenant("acme").connections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn tenant_connection_limit_and_kill() {
        let r = registry();
        let addr = "127.0.0.1:1".parse().unwrap();
        let a = r.connect(addr);
        let b = r.connect(addr);
        assert!(a.authenticate(identity("acme"), 1).is_some());
        assert!(b.authenticate(identity("acme"), 1).is_none());
        assert_eq!(r.kill_tenant("acme"), 1);
        assert!(a.entry.is_killed() && !b.entry.is_killed());
    }

    #[test]
    fn tenant_metrics_fold_beyond_the_top_n() {
        let r = registry();
        for (i, t) in ["a", "b", "c", "d"].iter().enumerate() {
            r.tenant(t)
                .transactions
                .store(10 * (i as u64 + 1), Ordering::Relaxed);
        }
        let families = r.tenant_collector(Arc::new(AtomicUsize::new(2))).collect();
        let tx = families
            .iter()
            .find(|f| f.name() == "pgtenant_tenant_transactions_total")
            .unwrap();
        let mut got: Vec<(String, f64)> = tx
            .get_metric()
            .iter()
            .map(|m| {
                (
                    m.get_label()[0].value().to_string(),
                    m.get_counter().get_value(),
                )
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("c".into(), 30.0),
                ("d".into(), 40.0),
                ("other".into(), 30.0)
            ]
        );
    }

    /// Every connected client has one entry behind an Arc: past 176 bytes (192 with the
    /// Arc's counts) mimalloc puts it in the 224-byte size class (benches/idle.sh).
    #[test]
    fn a_client_entry_fits_mimallocs_192_byte_class() {
        let size = std::mem::size_of::<ClientEntry>();
        assert!(size <= 176, "ClientEntry is {size} bytes");
    }
}
