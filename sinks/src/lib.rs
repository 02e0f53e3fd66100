//! stockflow's sinks: adapters that carry view changes out of the engine.
//!
//! [`webhooks`]: alert delivery (registry, signature, retries). The
//! ClickHouse writer and Arrow/Parquet export land here too, depending on
//! `stockflow-dataflows` for the rows they write and on nothing of the engine.

#![deny(missing_docs)]

pub mod webhooks;
