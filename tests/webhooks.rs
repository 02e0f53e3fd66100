//! Webhooks against a real receiver: a test HTTP server on loopback that
//! records what it gets and fails on purpose. Deliveries are signed, retried
//! with the same delivery id, recorded as failed after the last attempt,
//! and not repeated after a restart.

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stockflow::server::{self, Running};

mod common;

/// What the receiver got: (path, delivery id, signature, event type, body).
type Received = Arc<Mutex<Vec<(String, String, String, String, Vec<u8>)>>>;

/// A receiver on loopback: `/flaky` fails the first two requests of each
/// delivery id, `/down` always answers 503, anything else 200.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let log = received.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
        let log = log.clone();
        async move {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let delivery = header("x-stockflow-delivery");
            let mut log = log.lock().unwrap();
            let earlier = log.iter().filter(|r| r.1 == delivery).count();
            log.push((uri.path().to_owned(), delivery, header("x-stockflow-signature"), header("x-stockflow-event"), body.to_vec()));
            match uri.path() {
                "/flaky" if earlier < 2 => StatusCode::INTERNAL_SERVER_ERROR,
                "/down" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::OK,
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, received)
}

async fn start(dir: &std::path::Path) -> Running {
    let mut settings = common::local_settings(dir, 1);
    settings.webhook_policy.first_backoff = Duration::from_millis(50);
    settings.webhook_policy.max_attempts = 3;
    let running = server::start(&settings).await.unwrap();
    for _ in 0..200 {
        if reqwest::get(format!("http://{}/ready", running.addr)).await.unwrap().status() == 200 {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not ready");
}

async fn post(running: &Running, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new().post(format!("http://{}{path}", running.addr)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(running: &Running, path: &str) -> Value {
    reqwest::get(format!("http://{}{path}", running.addr)).await.unwrap().json().await.unwrap()
}

/// Adjusts stock and waits for the outcome.
async fn adjust(running: &Running, qty: i64) {
    let (status, answer) = post(running, "/v1/stock/A/adjust", json!({"location": "madrid", "qty": qty})).await;
    assert_eq!(status, 202);
    let outcome = get(running, &format!("/v1/commands/{}?after={}", answer["command_id"].as_str().unwrap(), answer["token"].as_str().unwrap())).await;
    assert_eq!(outcome["status"], "accepted", "{outcome}");
}

/// Waits until `check` holds on what the receiver got.
async fn until(received: &Received, what: &str, check: impl Fn(&[(String, String, String, String, Vec<u8>)]) -> bool) {
    for _ in 0..400 {
        if check(&received.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}: got {:?}", received.lock().unwrap().iter().map(|r| (&r.0, &r.1)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_with_one_id_recorded_and_not_repeated_after_a_restart() {
    let (base, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let secret = "a-secret-of-enough-length";

    // Bad registrations are precise 400s and register nothing.
    for (body, detail) in [
        (json!({"url": "ftp://example.com/x", "secret": secret}), "only http and https"),
        (json!({"url": format!("{base}/flaky")}), "secret: required"),
        (json!({"url": format!("{base}/flaky"), "secret": "short"}), "secret: between 16 and 256 bytes"),
        (json!({"url": format!("{base}/flaky"), "secret": secret, "kinds": ["low"]}), "`low` is not one of low_stock, out_of_stock"),
        (json!({"url": format!("{base}/flaky"), "secret": secret, "colour": "red"}), "unknown field `colour`"),
    ] {
        let (status, problem) = post(&running, "/v1/webhooks", body).await;
        assert_eq!(status, 400, "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains(detail), "{problem}");
    }
    let (status, flaky) = post(&running, "/v1/webhooks", json!({"url": format!("{base}/flaky"), "secret": secret, "kinds": ["low_stock"]})).await;
    assert_eq!(status, 201, "{flaky}");
    assert!(flaky.get("secret").is_none(), "the secret is never shown back");
    let (_, down) = post(&running, "/v1/webhooks", json!({"url": format!("{base}/down"), "secret": secret})).await;
    let listed = get(&running, "/v1/webhooks").await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 2);

    let (status, _) = post(&running, "/v1/items", json!({"sku": "A", "name": "A", "price": "1", "reorder_point": 5, "stock": {"madrid": 10}})).await;
    assert_eq!(status, 202);
    adjust(&running, -6).await;

    // The flaky receiver fails twice, then takes the third attempt: one delivery id throughout.
    until(&received, "three attempts at /flaky", |r| r.iter().filter(|r| r.0 == "/flaky").count() == 3).await;
    let flaky_requests: Vec<_> = received.lock().unwrap().iter().filter(|r| r.0 == "/flaky").cloned().collect();
    let delivery_id = &flaky_requests[0].1;
    assert!(delivery_id.starts_with(flaky["id"].as_str().unwrap()), "{delivery_id}");
    assert!(flaky_requests.iter().all(|r| &r.1 == delivery_id), "the same delivery id on every attempt");
    for (_, _, signature, event_type, body) in &flaky_requests {
        assert_eq!(signature, &stockflow_sinks::webhooks::sign(secret.as_bytes(), body), "the signature verifies");
        assert_eq!(event_type, "alert.low_stock.raised");
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!((event["sku"].as_str(), event["available"].as_i64()), (Some("A"), Some(4)));
    }
    let deliveries = get(&running, &format!("/v1/webhooks/{}/deliveries", flaky["id"].as_str().unwrap())).await;
    assert_eq!(deliveries["deliveries"][0]["status"], "delivered", "{deliveries}");
    assert_eq!(deliveries["deliveries"][0]["attempts"], 3);

    // The receiver that is down gets every attempt, then the delivery is recorded as failed.
    until(&received, "three attempts at /down", |r| r.iter().filter(|r| r.0 == "/down").count() == 3).await;
    let down_id = down["id"].as_str().unwrap();
    for _ in 0..100 {
        if get(&running, &format!("/v1/webhooks/{down_id}/deliveries")).await["deliveries"][0]["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let failed = get(&running, &format!("/v1/webhooks/{down_id}/deliveries")).await;
    assert_eq!((failed["deliveries"][0]["status"].as_str(), failed["deliveries"][0]["response_status"].as_u64()), (Some("failed"), Some(503)), "{failed}");
    let metrics = reqwest::get(format!("http://{}/metrics", running.addr)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("stockflow_webhook_attempts_total{{outcome=\"failed\",webhook=\"{down_id}\"}} 1")), "{metrics}");

    // Deleting stops deliveries to it.
    let status = reqwest::Client::new().delete(format!("http://{}/v1/webhooks/{down_id}", running.addr)).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 204);
    running.shutdown.trigger();
    running.wait().await.unwrap();

    // After a restart the registration and the cursor are still there: the
    // delivered alert is not delivered again; the next one is, once.
    let running = start(dir.path()).await;
    assert_eq!(get(&running, "/v1/webhooks").await["webhooks"].as_array().unwrap().len(), 1);
    adjust(&running, 6).await;
    until(&received, "the clear, on its third attempt", |r| r.iter().filter(|r| r.3 == "alert.low_stock.cleared").count() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = received.lock().unwrap().clone();
    let flaky: Vec<&String> = received.iter().filter(|r| r.0 == "/flaky").map(|r| &r.3).collect();
    assert_eq!(flaky, [&["alert.low_stock.raised"; 3][..], &["alert.low_stock.cleared"; 3][..]].concat());
    assert_eq!(received.iter().filter(|r| r.0 == "/down").count(), 3, "a deleted webhook gets nothing more");
    running.shutdown.trigger();
    running.wait().await.unwrap();
}
