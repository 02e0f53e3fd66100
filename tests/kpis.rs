//! KPIs over HTTP against a real listening server fed through the embedded
//! log: event-time buckets, a late order correcting an old bucket, a
//! cancellation retracting its revenue (also on the change stream), top
//! skus, gauges, a custom KPI from the config, and precise 400s.

use serde_json::{json, Value};
use std::time::Duration;
use stockflow::server::{Running, INVENTORY_EVENTS, ORDER_EVENTS};
use stockflow_dataflows::kpis::{KpiSpec, KpiSpecConfig};

mod common;

use common::{append_events, stop, Client, Server};

/// Appends JSON events to `topic`, keyed by sku (or order); returns an `after` token covering them.
fn append(running: &Running, topic_name: &str, events: &[Value]) -> String {
    let key = |event: &Value| {
        let id = event["sku"].as_str().or(event["order_id"].as_str());
        format!("default/{}", id.unwrap_or(""))
    };
    append_events(running, topic_name, events.iter().map(|e| (key(e), e)))
}

fn order(id: &str, ts: &str, lines: &[(&str, i64, &str)], total: &str) -> Value {
    let lines: Vec<Value> = lines.iter().map(|(sku, qty, price)| json!({"sku": sku, "location": "madrid", "qty": qty, "price": price})).collect();
    json!({"id": format!("ev-{id}"), "type": "order.placed", "ts": ts, "order_id": id, "customer_id": "ana", "lines": lines, "total": total})
}

/// `{(bucket, metric): value}` of a `GET /v1/kpis` answer.
fn by_bucket(answer: &Value) -> std::collections::BTreeMap<(String, String), Value> {
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                (
                    row["bucket"].as_str().unwrap().to_owned(),
                    row["metric"].as_str().unwrap().to_owned(),
                ),
                row["value"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpis_follow_late_events_and_cancellations() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::local_settings(dir.path(), 2);
    let damaged = KpiSpecConfig {
        name: "damaged".into(),
        event_type: "stock.adjusted".into(),
        filter: Some("reason == 'damage'".into()),
        group_by: vec!["location".into()],
        aggregate: "sum".into(),
        field: Some("qty".into()),
        window: None,
    };
    settings.kpi_specs = vec![KpiSpec::compile(&damaged).unwrap()].into();
    let running = Server::of(settings).start().await;
    let client = Client::new(&running);

    let stock = append(
        &running,
        INVENTORY_EVENTS,
        &[
            json!({"id": "i1", "type": "item.created", "ts": "2026-11-20T10:15:00Z", "sku": "A", "name": "A", "price": "2.50", "stock": {"madrid": 10}}),
            json!({"id": "i2", "type": "item.created", "ts": "2026-11-20T10:16:00Z", "sku": "B", "name": "B", "price": "1.00", "stock": {"madrid": 5}}),
            json!({"id": "a1", "type": "stock.adjusted", "ts": "2026-11-20T10:30:00Z", "sku": "A", "location": "madrid", "qty": -2, "reason": "damage"}),
        ],
    );
    let orders = append(
        &running,
        ORDER_EVENTS,
        &[
            order("o1", "2026-11-20T10:20:00Z", &[("A", 2, "2.50")], "5.00"),
            order("o2", "2026-11-20T11:05:00Z", &[("B", 3, "1.00")], "3.00"),
        ],
    );
    let range = "from=2026-11-20T00:00:00Z&to=2026-11-21T00:00:00Z";
    let (status, hours) = client
        .get(&format!(
            "/v1/kpis?window=hour&{range}&after={stock},{orders}"
        ))
        .await;
    assert_eq!(status, 200, "{hours}");
    let rows = by_bucket(&hours);
    let at = |hour: u32, metric: &str| {
        rows.get(&(
            format!("2026-11-20T{hour:02}:00:00.000Z"),
            metric.to_owned(),
        ))
        .cloned()
    };
    assert_eq!(at(10, "orders"), Some(json!(1)));
    assert_eq!(at(10, "revenue"), Some(json!(5.0)));
    assert_eq!(at(10, "units_sold"), Some(json!(2)));
    assert_eq!(
        at(10, "stock_movements"),
        Some(json!(3)),
        "two initial stocks and one adjustment"
    );
    assert_eq!(at(10, "items_created"), Some(json!(2)));
    assert_eq!(at(11, "revenue"), Some(json!(3.0)));
    assert_eq!(at(9, "orders"), None);
    assert_eq!(
        hours["gauges"],
        json!({"low_stock_skus": 2, "out_of_stock_skus": 0, "inventory_value": 25.0, "skus_active": 2}),
        "8 × 2.50 + 5 × 1.00"
    );

    // A late order lands in hour 9; o1 is cancelled at 12:00: its revenue leaves hour 10.
    let (status, stream) = {
        let response = client
            .http
            .get(format!(
                "{}/v1/views/kpis/changes?prefix=revenue",
                client.base
            ))
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response)
    };
    assert_eq!(status, 200);
    let late = append(
        &running,
        ORDER_EVENTS,
        &[order(
            "o3",
            "2026-11-20T09:10:00Z",
            &[("C", 1, "7.50")],
            "7.50",
        )],
    );
    let cancel = append(
        &running,
        ORDER_EVENTS,
        &[
            json!({"id": "c1", "type": "order.cancelled", "ts": "2026-11-20T12:00:00Z", "order_id": "o1", "reason": "customer"}),
        ],
    );
    let (_, hours) = client
        .get(&format!(
            "/v1/kpis?window=hour&{range}&after={late},{cancel}"
        ))
        .await;
    let rows = by_bucket(&hours);
    let at = |hour: u32, metric: &str| {
        rows.get(&(
            format!("2026-11-20T{hour:02}:00:00.000Z"),
            metric.to_owned(),
        ))
        .cloned()
    };
    assert_eq!(
        at(9, "revenue"),
        Some(json!(7.5)),
        "the late order corrects its own hour"
    );
    assert_eq!(
        at(10, "orders"),
        None,
        "the cancelled order left hour 10: {hours}"
    );
    assert_eq!(at(10, "revenue"), None);
    assert_eq!(at(12, "orders_cancelled"), Some(json!(1)));
    let (_, days) = client.get(&format!("/v1/kpis?window=day&{range}")).await;
    let day = |metric: &str| {
        by_bucket(&days)
            .get(&("2026-11-20T00:00:00.000Z".to_owned(), metric.to_owned()))
            .cloned()
    };
    assert_eq!(day("orders"), Some(json!(2)));
    assert_eq!(day("revenue"), Some(json!(10.5)));
    assert_eq!(day("avg_order_value"), Some(json!(5.25)));
    let damaged_rows: Vec<&Value> = days["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["metric"] == "damaged")
        .collect();
    assert_eq!(damaged_rows.len(), 1, "{days}");
    assert_eq!(
        (
            damaged_rows[0]["group"].clone(),
            damaged_rows[0]["value"].clone()
        ),
        (json!("madrid"), json!(-2))
    );
    let (_, only) = client
        .get(&format!("/v1/kpis?window=day&{range}&metric=units_sold"))
        .await;
    assert_eq!(only["rows"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["rows"][0]["value"], 4, "B 3 + C 1");

    let (status, top) = client.get("/v1/kpis/top-skus?day=2026-11-20").await;
    assert_eq!(status, 200, "{top}");
    assert_eq!(
        top["skus"],
        json!([{"rank": 1, "sku": "B", "units": 3}, {"rank": 2, "sku": "C", "units": 1}])
    );
    let (_, newest) = client.get("/v1/kpis/top-skus").await;
    assert_eq!(newest["day"], "2026-11-20");

    // The change stream saw hour 10's revenue retracted and the late hour 9
    // inserted (the two orders' partitions may close in different epochs).
    let mut stream = stream;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = |text: &str| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect::<Vec<Value>>()
    };
    let retracted = |l: &Value| {
        l["diff"] == -1
            && l["row"]["bucket"] == "2026-11-20T10:00:00.000Z"
            && l["row"]["window"] == "hour"
            && l["row"]["value"] == 5.0
    };
    let late_inserted = |l: &Value| {
        l["diff"] == 1
            && l["row"]["bucket"] == "2026-11-20T09:00:00.000Z"
            && l["row"]["window"] == "hour"
    };
    while !(lines(&text).iter().any(retracted) && lines(&text).iter().any(late_inserted)) {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("the retraction and the late bucket arrive: {text}"))
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }

    // Bad requests: precise 400s.
    for (path, detail) in [
        (
            "/v1/kpis?window=week",
            "query parameter window: `week` is not one of hour, day",
        ),
        (
            "/v1/kpis?metric=profit",
            "query parameter metric: unknown metric `profit`",
        ),
        (
            "/v1/kpis?from=2026-11-21T00:00:00Z&to=2026-11-20T00:00:00Z",
            "must be before to",
        ),
        (
            "/v1/kpis?window=hour&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "at most 10000 per request",
        ),
        (
            "/v1/kpis?from=yesterday",
            "query parameter from: `yesterday` is not an RFC 3339 time",
        ),
        ("/v1/kpis?bucket=1", "unknown field `bucket`"),
        ("/v1/kpis/top-skus?day=20-11-2026", "query parameter day"),
    ] {
        let (status, problem) = client.get(path).await;
        assert_eq!(status, 400, "{path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{path}: {problem}"
        );
    }
    stop(running).await;
}
