//! The one home of what pgtenant refuses and why. `protocol/` decodes frames; this module
//! decides.

pub mod sql;
