//! Views and events as Arrow record batches: written to Parquet or Arrow IPC
//! files by `stockflow export`, and sent as an Arrow IPC stream by listings
//! asked for `Accept: application/vnd.apache.arrow.stream`.

use crate::settings::FileFormat;
use crate::store::Snapshot;
use anyhow::Context;
use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use std::path::Path;
use std::sync::Arc;
use stockflow_dataflows::kpis::{KpiKey, KpiValue};
use stockflow_dataflows::model::{
    encode_event, Event, ItemRow, Name, SkuKey, StockDelta, StockKey,
};
use stockflow_sinks::fs::AtomicFile;

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Views that can be exported.
pub const VIEWS: [&str; 3] = ["stock", "items", "kpis"];

fn utc_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Stock rows (`tenant, sku, location, on_hand, reserved, available, version, updated_at`).
pub fn stock_batch<'a>(rows: impl Iterator<Item = (&'a StockKey, &'a StockDelta)>) -> RecordBatch {
    let (mut tenant, mut sku, mut location) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut on_hand, mut reserved, mut available, mut version) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    let mut updated_at = TimestampMillisecondBuilder::new().with_timezone("UTC");
    for (key, delta) in rows {
        tenant.append_value(&key.tenant);
        sku.append_value(&key.sku);
        location.append_value(&key.location);
        on_hand.append_value(delta.on_hand);
        reserved.append_value(delta.reserved);
        available.append_value(delta.available());
        version.append_value(delta.changes);
        updated_at.append_value(delta.updated_at);
    }
    let schema = Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("location", DataType::Utf8, false),
        Field::new("on_hand", DataType::Int64, false),
        Field::new("reserved", DataType::Int64, false),
        Field::new("available", DataType::Int64, false),
        Field::new("version", DataType::Int64, false),
        Field::new("updated_at", utc_ms(), false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(tenant.finish()),
        Arc::new(sku.finish()),
        Arc::new(location.finish()),
        Arc::new(on_hand.finish()),
        Arc::new(reserved.finish()),
        Arc::new(available.finish()),
        Arc::new(version.finish()),
        Arc::new(updated_at.finish()),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

/// Item rows (`tenant, sku, name, price` — `Decimal128(38, 4)`, exact —
/// `category, reorder_point, target_level, active, updated_at`).
pub fn item_batch<'a>(rows: impl Iterator<Item = (&'a SkuKey, &'a ItemRow)>) -> RecordBatch {
    let (mut tenant, mut sku, mut name, mut category) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut price = Decimal128Builder::new()
        .with_precision_and_scale(38, 4)
        .expect("a valid decimal type");
    let (mut reorder_point, mut target_level) = (Int64Builder::new(), Int64Builder::new());
    let mut active = BooleanBuilder::new();
    let mut updated_at = TimestampMillisecondBuilder::new().with_timezone("UTC");
    for (key, row) in rows {
        tenant.append_value(&key.tenant);
        sku.append_value(&key.sku);
        name.append_value(&row.name);
        price.append_value(i128::from(row.price.ten_thousandths()));
        category.append_value(&row.category);
        reorder_point.append_option(row.reorder_point);
        target_level.append_option(row.target_level);
        active.append_value(row.active);
        updated_at.append_value(row.updated_at);
    }
    let schema = Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("price", DataType::Decimal128(38, 4), false),
        Field::new("category", DataType::Utf8, false),
        Field::new("reorder_point", DataType::Int64, true),
        Field::new("target_level", DataType::Int64, true),
        Field::new("active", DataType::Boolean, false),
        Field::new("updated_at", utc_ms(), false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(tenant.finish()),
        Arc::new(sku.finish()),
        Arc::new(name.finish()),
        Arc::new(price.finish()),
        Arc::new(category.finish()),
        Arc::new(reorder_point.finish()),
        Arc::new(target_level.finish()),
        Arc::new(active.finish()),
        Arc::new(updated_at.finish()),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

/// KPI rows (`tenant, window, bucket, metric, group, kind, value`); `value`
/// is text so money and counts stay exact (`12.5000` is not a float).
pub fn kpi_batch<'a>(rows: impl Iterator<Item = (&'a KpiKey, &'a KpiValue)>) -> RecordBatch {
    let (mut tenant, mut window, mut metric, mut group, mut kind, mut value) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut bucket = TimestampMillisecondBuilder::new().with_timezone("UTC");
    for (key, v) in rows {
        tenant.append_value(&key.tenant);
        window.append_value(key.window.name());
        bucket.append_value(key.bucket);
        metric.append_value(&key.metric);
        group.append_value(&key.group);
        let (k, text) = match v {
            KpiValue::Int(n) => ("int", n.to_string()),
            KpiValue::Money(m) => (
                "money",
                format!(
                    "{}{}.{:04}",
                    if *m < 0 { "-" } else { "" },
                    m.unsigned_abs() / 10_000,
                    m.unsigned_abs() % 10_000
                ),
            ),
            KpiValue::Ratio(r) => ("ratio", r.to_string()),
        };
        kind.append_value(k);
        value.append_value(text);
    }
    let schema = Schema::new(vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("window", DataType::Utf8, false),
        Field::new("bucket", utc_ms(), false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(tenant.finish()),
        Arc::new(window.finish()),
        Arc::new(bucket.finish()),
        Arc::new(metric.finish()),
        Arc::new(group.finish()),
        Arc::new(kind.finish()),
        Arc::new(value.finish()),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

/// An event and where it was read.
pub struct PositionedEvent {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The event.
    pub event: Event,
}

/// Event rows (`topic, partition, offset, tenant, id, type, ts, payload`).
pub fn event_batch(rows: &[PositionedEvent]) -> RecordBatch {
    let (mut topic, mut tenant, mut id, mut kind, mut payload) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let (mut partition, mut offset) = (UInt32Builder::new(), UInt64Builder::new());
    let mut ts = TimestampMillisecondBuilder::new().with_timezone("UTC");
    for row in rows {
        topic.append_value(&row.topic);
        partition.append_value(row.partition);
        offset.append_value(row.offset);
        tenant.append_value(&row.event.tenant);
        id.append_value(&row.event.id);
        kind.append_value(row.event.body.type_name());
        ts.append_value(row.event.ts);
        payload.append_value(encode_event(&row.event).to_string());
    }
    let schema = Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::UInt32, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("tenant", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("ts", utc_ms(), false),
        Field::new("payload", DataType::Utf8, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        Arc::new(tenant.finish()),
        Arc::new(id.finish()),
        Arc::new(kind.finish()),
        Arc::new(ts.finish()),
        Arc::new(payload.finish()),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

/// The rows of `view` (one of [`VIEWS`]) in `snapshot`, of `tenant` only when given.
pub fn view_batch(
    snapshot: &Snapshot,
    view: &str,
    tenant: Option<&Name>,
) -> anyhow::Result<RecordBatch> {
    let keep = |t: &Name| tenant.is_none_or(|tenant| tenant == t);
    match view {
        "stock" => Ok(stock_batch(
            snapshot.stock.iter().filter(|(k, _)| keep(&k.tenant)),
        )),
        "items" => Ok(item_batch(
            snapshot.items.iter().filter(|(k, _)| keep(&k.tenant)),
        )),
        "kpis" => Ok(kpi_batch(
            snapshot.kpis.iter().filter(|(k, _)| keep(&k.tenant)),
        )),
        other => anyhow::bail!(
            "view `{other}` cannot be exported (views: {})",
            VIEWS.join(", ")
        ),
    }
}

/// `batch` as an Arrow IPC stream (what listings answer to `Accept: application/vnd.apache.arrow.stream`).
pub fn arrow_stream(batch: &RecordBatch) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())
            .expect("a schema arrow can write");
        writer.write(batch).expect("writing to memory");
        writer.finish().expect("writing to memory");
    }
    bytes
}

/// Writes record batches to a Parquet or Arrow IPC file, which appears
/// whole when [`FileWriter::finish`] returns, or not at all: an export that
/// fails half way leaves no half file (nor replaces an older one).
pub enum FileWriter {
    /// Parquet.
    Parquet(parquet::arrow::ArrowWriter<AtomicFile>),
    /// Arrow IPC.
    Arrow(arrow_ipc::writer::FileWriter<AtomicFile>),
}

impl FileWriter {
    /// Starts writing `path` for batches of `schema`.
    pub fn create(path: &Path, format: FileFormat, schema: &Schema) -> anyhow::Result<FileWriter> {
        let file =
            AtomicFile::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(match format {
            FileFormat::Parquet => FileWriter::Parquet(parquet::arrow::ArrowWriter::try_new(
                file,
                Arc::new(schema.clone()),
                None,
            )?),
            FileFormat::Arrow => {
                FileWriter::Arrow(arrow_ipc::writer::FileWriter::try_new(file, schema)?)
            }
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        match self {
            FileWriter::Parquet(writer) => writer.write(batch)?,
            FileWriter::Arrow(writer) => writer.write(batch)?,
        }
        Ok(())
    }

    /// Writes the footer and makes the file appear at its path, synced.
    pub fn finish(self) -> anyhow::Result<()> {
        let file = match self {
            FileWriter::Parquet(writer) => writer.into_inner()?,
            FileWriter::Arrow(mut writer) => {
                writer.finish()?;
                writer.into_inner()?
            }
        };
        Ok(file.commit()?)
    }
}
