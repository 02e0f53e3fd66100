//! Exports read back with the Arrow and Parquet readers equal the views:
//! `stockflow export --view stock` (Parquet and Arrow IPC files, rebuilt
//! from the embedded log), `--events` (a topic range), and a `GET /v1/stock`
//! page asked for as an Arrow IPC stream from a real listening server.

use arrow_array::{Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use serde_json::json;
use std::collections::BTreeMap;
use stockflow::config::{ExportArgs, ServeArgs};
use stockflow::server::INVENTORY_EVENTS;
use stockflow::settings::FileFormat;

mod common;

use common::{stop, Client, Server};

type Rows = BTreeMap<String, [i64; 3]>;

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("{name}: another type"))
}

/// `tenant/sku/location` → `[on_hand, reserved, available]` of stock batches.
fn stock_rows(batches: &[RecordBatch]) -> Rows {
    let mut rows = Rows::new();
    for batch in batches {
        let (tenant, sku, location) = (
            column::<StringArray>(batch, "tenant"),
            column::<StringArray>(batch, "sku"),
            column::<StringArray>(batch, "location"),
        );
        let (on_hand, reserved, available) = (
            column::<Int64Array>(batch, "on_hand"),
            column::<Int64Array>(batch, "reserved"),
            column::<Int64Array>(batch, "available"),
        );
        for i in 0..batch.num_rows() {
            rows.insert(
                format!("{}/{}/{}", tenant.value(i), sku.value(i), location.value(i)),
                [on_hand.value(i), reserved.value(i), available.value(i)],
            );
        }
    }
    rows
}

fn export_args(out: &std::path::Path, format: FileFormat) -> ExportArgs {
    ExportArgs {
        view: Some("stock".into()),
        events: false,
        topic: None,
        from: None,
        to: None,
        tenant: None,
        format,
        out: out.to_path_buf(),
        serve: ServeArgs::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_read_back_equal_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let settings = common::local_settings(dir.path(), 2);
    let running = Server::of(settings.clone()).start().await;
    let client = Client::new(&running);
    let topic = running.log.topic(INVENTORY_EVENTS, 3).unwrap();
    let mut after = Vec::new();
    for i in 0..150 {
        let sku = format!("SKU-{i:03}");
        let created = json!({"id": format!("i{i}"), "type": "item.created", "ts": "2026-11-20T10:00:00Z", "sku": sku, "name": sku, "price": "1.00", "stock": {"madrid": i, "bilbao": 2 * i}});
        let adjusted = json!({"id": format!("a{i}"), "type": "stock.adjusted", "ts": "2026-11-20T11:00:00Z", "sku": sku, "location": "madrid", "qty": 3, "reason": "count"});
        for event in [created, adjusted] {
            let (partition, offset) = topic
                .append(
                    format!("default/{sku}").as_bytes(),
                    event.to_string().as_bytes(),
                    0,
                )
                .unwrap();
            after.push(format!("{INVENTORY_EVENTS}:{partition}:{offset}"));
        }
    }
    topic.append(b"default/x", b"not json", 0).unwrap();
    let after = after.join(",");

    // The view over HTTP, page by page, as JSON and as Arrow IPC streams.
    let (mut json_rows, mut arrow_rows) = (Rows::new(), Rows::new());
    let mut cursor = String::new();
    loop {
        let (status, page) = client
            .get(&format!("/v1/stock?limit=100&after={after}{cursor}"))
            .await;
        assert_eq!(status, 200, "{page}");
        for row in page["rows"].as_array().unwrap() {
            let key = format!(
                "default/{}/{}",
                row["sku"].as_str().unwrap(),
                row["location"].as_str().unwrap()
            );
            json_rows.insert(
                key,
                [
                    row["on_hand"].as_i64().unwrap(),
                    row["reserved"].as_i64().unwrap(),
                    row["available"].as_i64().unwrap(),
                ],
            );
        }
        let response = client
            .http
            .get(format!("{}/v1/stock?limit=100{cursor}", client.base))
            .header("accept", "application/vnd.apache.arrow.stream")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/vnd.apache.arrow.stream"
        );
        let next = response
            .headers()
            .get("x-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            next.as_deref(),
            page["next_cursor"].as_str(),
            "the Arrow page ends where the JSON page does"
        );
        let body = response.bytes().await.unwrap();
        let batches: Vec<RecordBatch> =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
                .unwrap()
                .map(Result::unwrap)
                .collect();
        arrow_rows.append(&mut stock_rows(&batches));
        match next {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(json_rows.len(), 300);
    assert_eq!(arrow_rows, json_rows);
    // The items listing too.
    let response = client
        .http
        .get(format!("{}/v1/items?limit=1000", client.base))
        .header("accept", "application/vnd.apache.arrow.stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("x-next-cursor").is_none(),
        "one page holds the 150 items"
    );
    let body = response.bytes().await.unwrap();
    let batches: Vec<RecordBatch> =
        arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let skus: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|i| column::<StringArray>(b, "sku").value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        skus,
        (0..150).map(|i| format!("SKU-{i:03}")).collect::<Vec<_>>()
    );
    stop(running).await;

    // `stockflow export --view stock`, rebuilt from the log, in both formats.
    let parquet = dir.path().join("stock.parquet");
    stockflow::offline::export(&settings, &export_args(&parquet, FileFormat::Parquet))
        .await
        .unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&parquet).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(
        stock_rows(&batches),
        json_rows,
        "the Parquet export differs from the view"
    );

    let arrow = dir.path().join("stock.arrow");
    stockflow::offline::export(&settings, &export_args(&arrow, FileFormat::Arrow))
        .await
        .unwrap();
    let reader =
        arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&arrow).unwrap(), None).unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(
        stock_rows(&batches),
        json_rows,
        "the Arrow export differs from the view"
    );

    // Items, with their price exact (Decimal128(38, 4)).
    let items = dir.path().join("items.parquet");
    stockflow::offline::export(
        &settings,
        &ExportArgs {
            view: Some("items".into()),
            ..export_args(&items, FileFormat::Parquet)
        },
    )
    .await
    .unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&items).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(
        batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        150
    );
    let price = column::<arrow_array::Decimal128Array>(&batches[0], "price");
    assert_eq!((price.value(0), price.scale()), (10_000, 4), "1.00 exactly");

    // Raw events of a range: offsets 1.. of every partition (the bad message is left out).
    let events = dir.path().join("events.parquet");
    let args = ExportArgs {
        view: None,
        events: true,
        topic: Some(INVENTORY_EVENTS.into()),
        from: Some("1".into()),
        ..export_args(&events, FileFormat::Parquet)
    };
    stockflow::offline::export(&settings, &args).await.unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&events).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let offsets: Vec<u64> = batches
        .iter()
        .flat_map(|b| column::<UInt64Array>(b, "offset").values().to_vec())
        .collect();
    assert_eq!(
        offsets.len(),
        300 - 3,
        "every event but the first of each partition"
    );
    assert!(offsets.iter().all(|o| *o >= 1));
    let ids: std::collections::BTreeSet<String> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|i| column::<StringArray>(b, "id").value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(ids.len(), 297, "each event once");
    assert!(batches
        .iter()
        .all(|b| b.column_by_name("payload").unwrap().null_count() == 0));

    // A view that cannot be exported is refused with the list.
    let bad = ExportArgs {
        view: Some("orders".into()),
        ..export_args(&arrow, FileFormat::Arrow)
    };
    let error = stockflow::offline::export(&settings, &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("view `orders` cannot be exported (views: stock, items, kpis)"),
        "{error}"
    );
    // Each file was written beside its name and renamed: no temporary file is left.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(arrow.exists(), "the refused export left the older file");
}
