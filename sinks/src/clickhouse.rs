//! The ClickHouse sink's storage side: the schema, the row types, and the
//! one write protocol that makes the sink exactly-once.
//! Long because the schema, the rows and the write protocol must change together.
//!
//! # Exactly once
//!
//! The sink writes in *steps*, numbered by a sink epoch that only grows (it
//! continues from the last recorded one after a restart). A [`Batch`] holds
//! whole steps; [`ClickHouse::write`] inserts each table's rows of the batch
//! as **one INSERT** (one block, under `max_insert_block_size`, into an
//! unpartitioned MergeTree: it lands whole or not at all), then one row per
//! table into `sink_progress`. `sink_progress` is the commit point:
//!
//! - rows whose epoch is above the last recorded epoch were never committed
//!   (a crash between the data and the progress, or an INSERT whose answer
//!   was lost). Before writing anything, at start and after every failed
//!   write, [`ClickHouse::discard_uncommitted`] deletes them (a mutation,
//!   waited for) so the batch can be written again without doubling;
//! - the tables are also `ReplacingMergeTree`s keyed by each row's identity
//!   (event position, stock key and epoch, ...): should a duplicate slip in
//!   anyway (an operator replaying by hand), merges and `FINAL` collapse it.
//!
//! Everything here runs on ClickHouse 18.16 and on current releases: no
//! LowCardinality, no DateTime64, no JSON functions newer than `visitParam*`.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the sink writes. `Debug` shows no password.
#[derive(Clone)]
pub struct Config {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database (created if missing): `stockflow` by default.
    pub database: String,
    /// User (`default` when empty).
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let password = if self.password.is_empty() {
            ""
        } else {
            "<hidden>"
        };
        f.debug_struct("Config")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &password)
            .finish()
    }
}

/// A failed ClickHouse operation: what was being done and ClickHouse's answer.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    what: String,
    #[source]
    source: clickhouse::error::Error,
}

fn failed(what: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> Error {
    let what = what.into();
    move |source| Error { what, source }
}

/// A row of `events`: one decoded event and where it was read.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
pub struct EventRow {
    /// Source topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset of the message.
    pub offset: u64,
    /// Index of the event among those the message decoded into (Tradex and
    /// inventory-cqrs messages can mean several).
    pub idx: u16,
    /// Tenant.
    pub tenant: String,
    /// Event id.
    pub id: String,
    /// Event type (`stock.adjusted`, `order.placed`, ...).
    pub r#type: String,
    /// Sku, where the event has one.
    pub sku: String,
    /// Location, where the event has one.
    pub location: String,
    /// The event's quantity: adjustment delta, reserved/released/committed
    /// quantity, initial or absolute stock, units of an order.
    pub qty: i64,
    /// An order's total in ten-thousandths (`Decimal(38, 4)`), else 0.
    pub amount: i128,
    /// Event time, seconds (`DateTime`, UTC).
    pub ts: u32,
    /// The sink epoch that wrote it.
    pub epoch: u64,
    /// The message as it is in the topic (of the topic's format).
    pub payload: String,
}

/// A stock row as written to `stock_current` and `stock_changes`: the
/// `stock` view's columns.
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct StockRow {
    /// Tenant.
    pub tenant: String,
    /// Sku.
    pub sku: String,
    /// Location.
    pub location: String,
    /// On hand.
    pub on_hand: i64,
    /// Reserved.
    pub reserved: i64,
    /// On hand minus reserved.
    pub available: i64,
    /// Stock changes counted (the sku's version, summed over locations).
    pub version: i64,
    /// Newest event time of the row, seconds (`DateTime`).
    pub updated_at: u32,
}

/// A row of `stock_current`: the latest state of a key, or its tombstone.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
pub struct StockCurrentRow {
    /// Tenant.
    pub tenant: String,
    /// Sku.
    pub sku: String,
    /// Location.
    pub location: String,
    /// On hand.
    pub on_hand: i64,
    /// Reserved.
    pub reserved: i64,
    /// Available.
    pub available: i64,
    /// Version.
    pub version: i64,
    /// Newest event time, seconds.
    pub updated_at: u32,
    /// The sink epoch of this state (the ReplacingMergeTree version).
    pub epoch: u64,
    /// 1: the key left the view.
    pub deleted: u8,
}

impl StockCurrentRow {
    /// `row` as of sink epoch `epoch`; a tombstone when `deleted`.
    pub fn new(row: StockRow, epoch: u64, deleted: bool) -> StockCurrentRow {
        let StockRow {
            tenant,
            sku,
            location,
            on_hand,
            reserved,
            available,
            version,
            updated_at,
        } = row;
        StockCurrentRow {
            tenant,
            sku,
            location,
            on_hand,
            reserved,
            available,
            version,
            updated_at,
            epoch,
            deleted: deleted as u8,
        }
    }
}

/// A row of `stock_changes`: a retraction (-1) or insertion (+1) of a row.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
pub struct StockChangeRow {
    /// Tenant.
    pub tenant: String,
    /// Sku.
    pub sku: String,
    /// Location.
    pub location: String,
    /// On hand.
    pub on_hand: i64,
    /// Reserved.
    pub reserved: i64,
    /// Available.
    pub available: i64,
    /// Version.
    pub version: i64,
    /// Newest event time, seconds.
    pub updated_at: u32,
    /// The sink epoch.
    pub epoch: u64,
    /// -1 or +1.
    pub diff: i8,
}

impl StockChangeRow {
    /// `row` retracted (`diff` -1) or inserted (+1) at sink epoch `epoch`.
    pub fn new(row: StockRow, epoch: u64, diff: i8) -> StockChangeRow {
        let StockRow {
            tenant,
            sku,
            location,
            on_hand,
            reserved,
            available,
            version,
            updated_at,
        } = row;
        StockChangeRow {
            tenant,
            sku,
            location,
            on_hand,
            reserved,
            available,
            version,
            updated_at,
            epoch,
            diff,
        }
    }
}

/// A row of `kpis`.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
pub struct KpiRow {
    /// Tenant.
    pub tenant: String,
    /// `hour` or `day`.
    pub window: String,
    /// Start of the bucket, seconds (`DateTime`).
    pub bucket: u32,
    /// Metric name.
    pub metric: String,
    /// Group (custom KPIs with `group_by`, sku of `units_by_sku`), else "".
    pub group_key: String,
    /// `int`, `money` or `ratio`.
    pub kind: String,
    /// The value in ten-thousandths (`Decimal(38, 4)`): exact for counts and
    /// money, ratios rounded to 4 decimals.
    pub value: i128,
    /// The sink epoch (the ReplacingMergeTree version).
    pub epoch: u64,
    /// 1: the bucket's row left the view (not by retention: expired buckets
    /// stay in ClickHouse as history).
    pub deleted: u8,
}

/// A row of `alerts`: one alert transition, as in the alerts topic.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
pub struct AlertRow {
    /// Tenant.
    pub tenant: String,
    /// Sku.
    pub sku: String,
    /// Location.
    pub location: String,
    /// `low_stock` or `out_of_stock`.
    pub kind: String,
    /// `raised` or `cleared`.
    pub state: String,
    /// Transition number of the (row, kind): odd raised, even cleared.
    pub transition: u64,
    /// Available at the transition.
    pub available: i64,
    /// Threshold in force.
    pub threshold: i64,
    /// Target level in force.
    pub target_level: i64,
    /// Suggested reorder quantity (raised), else 0.
    pub suggested_reorder_qty: i64,
    /// Event time of the transition, seconds (`DateTime`).
    pub ts: u32,
    /// Alert event id.
    pub id: String,
    /// Alerts topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The sink epoch.
    pub epoch: u64,
}

/// A row of `sink_progress`.
#[derive(Clone, Debug, PartialEq, Row, Serialize, Deserialize)]
struct ProgressRow {
    table: String,
    epoch: u64,
    engine_epoch: u64,
    offsets: String,
    rows: u64,
    written_at: u32,
}

/// The data tables, in the order a batch writes them.
pub const TABLES: [&str; 5] = ["events", "stock_changes", "stock_current", "kpis", "alerts"];

/// What `sink_progress` says was last committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last sink epoch fully written (0: nothing yet).
    pub epoch: u64,
    /// The engine epoch of the snapshot the last state rows came from.
    pub engine_epoch: u64,
    /// Topic → partition → next offset not yet written (events and alerts).
    pub offsets: BTreeMap<String, BTreeMap<u32, u64>>,
}

/// One or more whole steps of the sink, written together.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// The last sink epoch the batch holds.
    pub epoch: u64,
    /// The engine epoch of the newest snapshot whose state it holds.
    pub engine_epoch: u64,
    /// Where reading stands after the batch: topic → partition → next offset.
    pub offsets: BTreeMap<String, BTreeMap<u32, u64>>,
    /// `events` rows.
    pub events: Vec<EventRow>,
    /// `stock_changes` rows.
    pub stock_changes: Vec<StockChangeRow>,
    /// `stock_current` rows.
    pub stock_current: Vec<StockCurrentRow>,
    /// `kpis` rows.
    pub kpis: Vec<KpiRow>,
    /// `alerts` rows.
    pub alerts: Vec<AlertRow>,
}

impl Batch {
    /// Rows held, all tables together.
    pub fn rows(&self) -> usize {
        self.counts().iter().map(|(_, n)| n).sum()
    }

    /// Rows per data table, in [`TABLES`] order.
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        let lens = [
            self.events.len(),
            self.stock_changes.len(),
            self.stock_current.len(),
            self.kpis.len(),
            self.alerts.len(),
        ];
        std::array::from_fn(|i| (TABLES[i], lens[i]))
    }
}

/// The statements that create the database and its tables, in order
/// (`{db}` stands for the database). Idempotent.
pub fn schema(database: &str) -> Vec<String> {
    let db = database;
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        // Every decoded event once, by position. Sorted for per-tenant,
        // per-type time ranges; the position makes the key an identity.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.events (\
             topic String, partition UInt32, offset UInt64, idx UInt16, \
             tenant String, id String, type String, sku String, location String, \
             qty Int64, amount Decimal(38, 4), ts DateTime, date Date MATERIALIZED toDate(ts), \
             epoch UInt64, payload String\
             ) ENGINE = ReplacingMergeTree(epoch) ORDER BY (tenant, type, ts, topic, partition, offset, idx)"
        ),
        // The stock view's changelog: per key and epoch one retraction and one insertion at most.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.stock_changes (\
             tenant String, sku String, location String, on_hand Int64, reserved Int64, available Int64, \
             version Int64, updated_at DateTime, epoch UInt64, diff Int8\
             ) ENGINE = ReplacingMergeTree ORDER BY (tenant, sku, location, epoch, diff)"
        ),
        // Latest row per key: the highest epoch wins in merges and FINAL.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.stock_current (\
             tenant String, sku String, location String, on_hand Int64, reserved Int64, available Int64, \
             version Int64, updated_at DateTime, epoch UInt64, deleted UInt8\
             ) ENGINE = ReplacingMergeTree(epoch) ORDER BY (tenant, sku, location)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.kpis (\
             tenant String, window String, bucket DateTime, metric String, group_key String, \
             kind String, value Decimal(38, 4), epoch UInt64, deleted UInt8\
             ) ENGINE = ReplacingMergeTree(epoch) ORDER BY (tenant, window, metric, bucket, group_key)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.alerts (\
             tenant String, sku String, location String, kind String, state String, transition UInt64, \
             available Int64, threshold Int64, target_level Int64, suggested_reorder_qty Int64, \
             ts DateTime, id String, topic String, partition UInt32, offset UInt64, epoch UInt64\
             ) ENGINE = ReplacingMergeTree ORDER BY (tenant, sku, location, kind, transition)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.sink_progress (\
             table String, epoch UInt64, engine_epoch UInt64, offsets String, rows UInt64, written_at DateTime\
             ) ENGINE = MergeTree ORDER BY (table, epoch)"
        ),
    ]
}

/// A connection to the sink's database.
#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    database: String,
}

/// How long one statement may take before it counts as failed.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

impl ClickHouse {
    /// A client for `config` (no connection is made yet).
    pub fn new(config: &Config) -> ClickHouse {
        let mut client = clickhouse::Client::default()
            .with_url(&config.url)
            // 18.16 knows RowBinary but not RowBinaryWithNamesAndTypes.
            .with_validation(false);
        if !config.user.is_empty() {
            client = client.with_user(&config.user);
        }
        if !config.password.is_empty() {
            client = client.with_password(&config.password);
        }
        ClickHouse {
            client,
            database: config.database.clone(),
        }
    }

    /// The database written to.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Creates the database and tables that are missing.
    pub async fn ensure_schema(&self) -> Result<(), Error> {
        for statement in schema(&self.database) {
            self.execute(&statement).await?;
        }
        Ok(())
    }

    /// Runs one statement (DDL, mutation, ...).
    pub async fn execute(&self, statement: &str) -> Result<(), Error> {
        timed(self.client.query(statement).execute(), statement).await
    }

    /// Runs a query and returns its rows.
    pub async fn fetch<T>(&self, query: &str) -> Result<Vec<T>, Error>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        timed(self.client.query(query).fetch_all::<T>(), query).await
    }

    /// What `sink_progress` last recorded.
    pub async fn progress(&self) -> Result<Progress, Error> {
        #[derive(Row, Deserialize)]
        struct Last {
            epoch: u64,
            engine_epoch: u64,
            offsets: String,
        }
        let db = &self.database;
        let rows: Vec<Last> =
            self.fetch(&format!("SELECT epoch, engine_epoch, offsets FROM {db}.sink_progress WHERE table = 'events' ORDER BY epoch DESC LIMIT 1")).await?;
        Ok(match rows.into_iter().next() {
            Some(last) => Progress {
                epoch: last.epoch,
                engine_epoch: last.engine_epoch,
                offsets: serde_json::from_str(&last.offsets).unwrap_or_default(),
            },
            None => Progress::default(),
        })
    }

    /// Deletes the rows above epoch `committed` (written but never recorded
    /// in `sink_progress`) and waits until the deletions are done. Returns
    /// how many rows there were.
    pub async fn discard_uncommitted(&self, committed: u64) -> Result<u64, Error> {
        #[derive(Row, Deserialize)]
        struct Count {
            n: u64,
        }
        let db = &self.database;
        let mut discarded = 0;
        for table in TABLES {
            let count: Vec<Count> = self
                .fetch(&format!(
                    "SELECT count() AS n FROM {db}.{table} WHERE epoch > {committed}"
                ))
                .await?;
            let n = count.first().map_or(0, |c| c.n);
            if n == 0 {
                continue;
            }
            discarded += n;
            self.execute(&format!(
                "ALTER TABLE {db}.{table} DELETE WHERE epoch > {committed}"
            ))
            .await?;
            // Mutations run in the background: wait until none is left on the table.
            let started = std::time::Instant::now();
            loop {
                let pending: Vec<Count> =
                    self.fetch(&format!("SELECT count() AS n FROM system.mutations WHERE database = '{db}' AND table = '{table}' AND is_done = 0")).await?;
                if pending.first().is_none_or(|c| c.n == 0) {
                    break;
                }
                if started.elapsed() > STATEMENT_TIMEOUT {
                    return Err(Error {
                        what: format!(
                            "waiting for the deletion of uncommitted rows of {db}.{table}"
                        ),
                        source: clickhouse::error::Error::TimedOut,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(discarded)
    }

    /// The latest stock rows ClickHouse holds (tombstones left out).
    pub async fn stock_current(&self) -> Result<Vec<StockRow>, Error> {
        let db = &self.database;
        self.fetch(&format!(
            "SELECT tenant, sku, location, on_hand, reserved, available, version, updated_at \
             FROM {db}.stock_current FINAL WHERE deleted = 0 ORDER BY tenant, sku, location"
        ))
        .await
    }

    /// The latest KPI rows ClickHouse holds (tombstones left out).
    pub async fn kpis(&self) -> Result<Vec<KpiRow>, Error> {
        let db = &self.database;
        self.fetch(&format!(
            "SELECT tenant, window, bucket, metric, group_key, kind, value, epoch, deleted \
             FROM {db}.kpis FINAL WHERE deleted = 0 ORDER BY tenant, window, metric, bucket, group_key"
        ))
        .await
    }

    /// Writes `batch`: each table's rows in one INSERT, then its progress.
    /// On an error nothing is recorded: call [`ClickHouse::discard_uncommitted`]
    /// before writing the batch again.
    pub async fn write(&self, batch: &Batch) -> Result<(), Error> {
        self.insert("events", &batch.events).await?;
        self.insert("stock_changes", &batch.stock_changes).await?;
        self.insert("stock_current", &batch.stock_current).await?;
        self.insert("kpis", &batch.kpis).await?;
        self.insert("alerts", &batch.alerts).await?;
        let offsets = serde_json::to_string(&batch.offsets).expect("offsets serialize");
        let written_at = u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .unwrap_or(u32::MAX);
        let rows = batch.counts().map(|(table, rows)| ProgressRow {
            table: table.into(),
            epoch: batch.epoch,
            engine_epoch: batch.engine_epoch,
            offsets: offsets.clone(),
            rows: rows as u64,
            written_at,
        });
        self.insert("sink_progress", &rows).await
    }

    async fn insert<T>(&self, table: &str, rows: &[T]) -> Result<(), Error>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let client = self.client.clone().with_database(&self.database);
        let what = || {
            format!(
                "inserting {} rows into {}.{table}",
                rows.len(),
                self.database
            )
        };
        let mut insert = client
            .insert::<T>(table)
            .await
            .map_err(failed(what()))?
            .with_timeouts(Some(STATEMENT_TIMEOUT), Some(STATEMENT_TIMEOUT));
        for row in rows {
            insert.write(row).await.map_err(failed(what()))?;
        }
        insert.end().await.map_err(failed(what()))
    }
}

async fn timed<T>(
    future: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    what: &str,
) -> Result<T, Error> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, future).await {
        Ok(result) => result.map_err(failed(what)),
        Err(_) => Err(Error {
            what: what.to_owned(),
            source: clickhouse::error::Error::TimedOut,
        }),
    }
}

/// Seconds of a millisecond timestamp, as a `DateTime` (clamped to its range).
pub fn datetime(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000).max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_clamp_to_the_datetime_range() {
        assert_eq!(datetime(1_500), 1);
        assert_eq!(datetime(-1), 0);
        assert_eq!(datetime(i64::MAX), u32::MAX);
    }

    #[test]
    fn every_data_table_has_an_epoch_and_a_create_statement() {
        let schema = schema("db");
        for table in TABLES {
            let create = schema
                .iter()
                .find(|s| s.contains(&format!("db.{table} (")))
                .unwrap_or_else(|| panic!("no CREATE for {table}"));
            assert!(
                create.contains("epoch UInt64"),
                "{table} has no epoch: {create}"
            );
            assert!(
                !create.contains("LowCardinality") && !create.contains("DateTime64"),
                "{table} would not run on 18.16"
            );
        }
    }
}
