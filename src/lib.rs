//! pgtenant: a PostgreSQL wire-protocol proxy that authenticates each client as a tenant,
//! pools backend connections per transaction, and puts the tenant's context into every
//! transaction with `set_config(name, value, true)`.
//!
//! The module map, top (nearest the client) to bottom; a module imports only from its own
//! layer or the layers below it (`tests/architecture.rs` checks this; ARCHITECTURE.md says
//! where a new feature belongs):
//! ```text
//! client ─▶ server   (accept, limits, drain)
//!         ─▶ frontend (startup, SCRAM auth as a tenant; admin users ─▶ admin console)
//!         ─▶ session  (transaction boundaries, context injection, guard, prepared statements)
//!         ─▶ pool     (checkout at transaction start, cleanup on release)
//!         ─▶ backend  (PostgreSQL, logged in as the app role)
//!
//! every stage reads: shared (config in force, tenants, pools, client slots, reload)
//! and below it:      tenant · registry, metrics, http · tls, stream · config, protocol, auth
//! ```
//!
//! - process: [`server`] (accept, drain, housekeeping, signals), [`demo`].
//! - [`frontend`]: one client up to an authenticated tenant; admin users go to [`admin`].
//! - [`session`]: one authenticated client, the transaction-pooling relay (context
//!   injection, guard, prepared statements); its input is [`session::handover`].
//! - [`shared`]: the state every stage reads: config in force, tenants, pools, client
//!   slots, PAUSE and shutdown flags, reload.
//! - resources: [`pool`] (checkout, cleanup on release), [`cancel`] (cancel routing),
//!   [`doctor`] (the RLS posture checks, `pgtenant doctor` and at start-up).
//! - [`tenant`]: tenant directory and each tenant's precomputed context.
//! - [`backend`]: one PostgreSQL connection, its statement cache and the proxy's own
//!   statements ([`backend::injection`]).
//! - operations: [`registry`] (who is connected), [`metrics`], [`http`] (/metrics, /readyz).
//! - transport: [`tls`] (both legs), [`stream`] (plain or TLS byte streams).
//! - foundation: [`config`] (typed `config.toml`, validated once with errors naming keys),
//!   [`protocol`] (framing, codecs, SQL lexer; no I/O), [`auth`] (SCRAM), [`verified`]
//!   (the verified context's SQL and key), [`signal`], [`pgcluster`] (a throwaway
//!   PostgreSQL for the demo and the tests).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines, clippy::cognitive_complexity))]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cancel;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod frontend;
pub mod http;
pub mod metrics;
pub mod pgcluster;
pub mod policy;
pub mod pool;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod session;
pub mod shared;
pub mod signal;
pub mod stream;
pub mod tenant;
pub mod tls;
pub mod verified;

pub use server::run;
pub use shared::Server;
