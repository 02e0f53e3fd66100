//! Memory per active KPI key: fills the publisher's two copies of the
//! `kpis` view (the [`Table`] it accumulates into and the snapshot's
//! persistent map readers see) with KEYS distinct (tenant, window, bucket,
//! metric) keys and reports the resident memory they added, per key.
//!
//! Run: `cargo bench --bench kpi_memory -- [KEYS]` (default 1000000).

use std::sync::Arc;
use stockflow_dataflows::kpis::{cells, Cell, KpiKey, Table, Window};
use stockflow_dataflows::model::Name;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn main() {
    let keys: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let metrics = [
        cells::STOCK_MOVEMENTS,
        cells::ITEMS_CREATED,
        cells::ORDERS_CANCELLED,
        cells::UNITS_SOLD,
    ];
    let before = resident_bytes();
    let mut table = Table::new(Arc::from(Vec::new()), i64::MAX);
    let mut snapshot: imbl::OrdMap<KpiKey, stockflow_dataflows::kpis::KpiValue> =
        imbl::OrdMap::new();
    let started = std::time::Instant::now();
    let mut made = 0;
    let mut bucket = 0i64;
    while made < keys {
        let mut batch = Vec::with_capacity(10_000);
        for tenant in 0..25 {
            for metric in metrics {
                batch.push((
                    KpiKey {
                        tenant: Name::from(format!("tenant-{tenant:03}")),
                        window: Window::Hour,
                        bucket,
                        metric: Name::from(metric),
                        group: Name::default(),
                    },
                    Cell { count: 3, sum: 7 },
                ));
            }
        }
        made += batch.len();
        bucket += Window::Hour.millis();
        for (row, diff) in table.apply(batch, Vec::new()).rows {
            if diff > 0 {
                snapshot.insert(row.key, row.value);
            } else {
                snapshot.remove(&row.key);
            }
        }
    }
    let elapsed = started.elapsed();
    let added = resident_bytes().saturating_sub(before);
    println!(
        "kpi keys {made}: {:.0} MiB resident added, {:.0} bytes per key (table + snapshot), applied at {:.0} keys/s",
        added as f64 / (1 << 20) as f64,
        added as f64 / made as f64,
        made as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(table.cells().len(), made);
    assert_eq!(snapshot.len(), made);
}
