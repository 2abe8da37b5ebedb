//! TLS on both legs: the client-facing acceptor with hot reload and client-certificate
//! identity, and libpq-style `sslmode` for backend connections. rustls with the ring
//! provider, passed explicitly everywhere.

pub mod client;
pub mod identity;
pub mod server;
pub mod verify;

pub use crate::config::tls::{IdentitySource, SslMode, TlsConfig, TlsMode};
pub use server::{ServerTls, TlsError};
