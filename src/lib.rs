//! stockflow: a streaming engine for inventory and orders.
//!
//! Sources (the embedded [`log`], later Kafka) feed the pure dataflows of
//! `stockflow-dataflows` through the [`engine`]; views are published per
//! epoch into the [`store`] that the [`http`] API reads. [`server`] wires a
//! run together; [`config`] resolves the [`settings`] every part reads.

pub mod api_keys;
pub mod changes;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod engine;
pub mod export;
pub mod http;
pub mod log;
pub mod log_commands;
pub mod metrics;
pub mod offline;
pub mod replay;
pub mod rows;
pub mod server;
pub mod settings;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod status;
pub mod store;
pub mod webhooks;
