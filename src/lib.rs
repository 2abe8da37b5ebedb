//! pgtenant: a PostgreSQL wire-protocol proxy that authenticates each client as a tenant,
//! pools backend connections per transaction, and puts the tenant's context into every
//! transaction with `set_config(name, value, true)`.
//!
//! Data flow:
//! ```text
//! client ─▶ server (accept, limits) ─▶ frontend (startup, auth) ─▶ session (transactions,
//!           injection, guard) ─▶ pool (checkout, cleanup on release) ─▶ backend (PostgreSQL)
//! ```
//!
//! - [`config`]: typed `config.toml`, validated once with errors naming keys.
//! - [`protocol`]: framing, message codecs and a SQL lexer; no I/O.
//! - [`auth`]: SCRAM-SHA-256 server side.
//! - [`tenant`]: tenant directory and precomputed injection messages.
//! - [`frontend`]: one client up to an authenticated tenant.
//! - [`session`]: the transaction-pooling relay loop.
//! - [`pool`] / [`backend`]: backend connections.
//! - [`tls`], [`stream`]: TLS on both legs, client-certificate identity.
//! - [`cancel`], [`metrics`], [`http`]: cancel routing and operations.
//! - [`doctor`]: the RLS posture checks (`pgtenant doctor`, and at start-up).
//! - [`server`]: the accept loop and process lifecycle.
//! - [`pgcluster`], [`demo`]: a throwaway PostgreSQL for the demo and the tests.

#![forbid(unsafe_code)]

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
pub mod signal;
pub mod stream;
pub mod tenant;
pub mod tls;
pub mod verified;

pub use server::{Server, run};
