//! stockflow's pure computations: collections of domain events in, collections
//! of view rows out. No I/O, no clocks, no threads of its own: sources and
//! sinks are adapters around this crate (see `CONTEXT.md` beside it).

#![deny(missing_docs)]

pub mod alert_rows;
pub mod alerts;
pub mod compact;
pub mod decider;
pub mod dedup;
pub mod items;
pub mod kpis;
pub mod model;
pub mod order_rows;
pub mod orders;
pub mod stock;

pub use alerts::low_stock;
pub use decider::decide;
pub use dedup::dedup;
pub use items::items;
pub use kpis::kpis;
pub use stock::{stock, stock_totals};
