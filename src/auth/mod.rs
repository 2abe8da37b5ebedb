//! Client authentication primitives (pure, no I/O): SCRAM-SHA-256 against stored verifiers.

pub mod fuzz;
pub mod saslprep;
pub mod scram;
