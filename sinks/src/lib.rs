//! stockflow's sinks: adapters that carry view changes out of the engine.
//!
//! [`webhooks`]: alert delivery (registry, signature, retries).
//! [`backoff`]: the one retry schedule and every retry loop's constants.
//! [`fs`]: the one atomic file write (temporary file, fsync, rename, fsync of
//! the directory).
//! [`clickhouse`]: the ClickHouse sink's schema, rows and exactly-once write
//! protocol. Both depend on `stockflow-dataflows` for the rows they write and
//! on nothing of the engine.

#![deny(missing_docs)]

pub mod backoff;
pub mod clickhouse;
pub mod fs;
pub mod webhooks;
