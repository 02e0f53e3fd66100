//! stockflow's sinks: adapters that carry view changes out of the engine.
//!
//! Empty for now, on purpose: the ClickHouse writer, Arrow/Parquet export and
//! alert delivery land here (one folder per sink, each with `config.rs`,
//! `sink.rs`, `service.rs` and its integration tests), depending on
//! `stockflow-dataflows` for the rows they write and on nothing of the engine.

#![deny(missing_docs)]
