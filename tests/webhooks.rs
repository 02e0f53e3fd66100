//! Webhooks against a real receiver: a test HTTP server on loopback that
//! records what it gets and fails on purpose. Deliveries are signed, retried
//! with the same delivery id, recorded as failed after the last attempt,
//! and not repeated after a restart. A tenant registers at most
//! `webhooks_per_tenant`; many webhooks share one reader and a bounded set
//! of threads; a receiver that stops answering falls behind alone and
//! catches up exactly; targets are checked against the refused ranges and
//! the operator's network lists, at registration and when connecting.

use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stockflow::server::Running;

mod common;
use common::{eventually, stop, Client, Observed, Server, EVENTUALLY};

/// What the receiver got: (path, delivery id, signature, event type, body).
type Received = Arc<Mutex<Vec<(String, String, String, String, Vec<u8>)>>>;

/// A receiver on loopback: `/flaky` fails the first two requests of each
/// delivery id, `/down` always answers 503, anything else 200.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let log = received.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let delivery = header("x-stockflow-delivery");
                let mut log = log.lock().unwrap();
                let earlier = log.iter().filter(|r| r.1 == delivery).count();
                log.push((
                    uri.path().to_owned(),
                    delivery,
                    header("x-stockflow-signature"),
                    header("x-stockflow-event"),
                    body.to_vec(),
                ));
                match uri.path() {
                    "/flaky" if earlier < 2 => StatusCode::INTERNAL_SERVER_ERROR,
                    "/down" => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::OK,
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, received)
}

async fn start(dir: &std::path::Path) -> Running {
    start_with(dir, |_| {}).await
}

async fn start_with(
    dir: &std::path::Path,
    change: impl FnOnce(&mut stockflow::settings::Settings),
) -> Running {
    Server::local(dir, 1)
        .with(|settings| {
            settings.webhook_policy.first_backoff = Duration::from_millis(50);
            settings.webhook_policy.max_attempts = 3;
            change(settings);
        })
        .start_ready()
        .await
}

async fn post(running: &Running, path: &str, body: Value) -> (u16, Value) {
    Client::new(running).post(path, body).await
}

/// The body of a GET of `path`.
async fn get(running: &Running, path: &str) -> Value {
    Client::new(running).get(path).await.1
}

/// Adjusts stock and waits for the outcome.
async fn adjust(running: &Running, qty: i64) {
    let (status, answer) = post(
        running,
        "/v1/stock/A/adjust",
        json!({"location": "madrid", "qty": qty}),
    )
    .await;
    assert_eq!(status, 202);
    let outcome = get(
        running,
        &format!(
            "/v1/commands/{}?after={}",
            answer["command_id"].as_str().unwrap(),
            answer["token"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(outcome["status"], "accepted", "{outcome}");
}

/// Waits until `check` holds on what the receiver got.
async fn until(
    received: &Received,
    what: &str,
    check: impl Fn(&[(String, String, String, String, Vec<u8>)]) -> bool,
) {
    // Long enough for ~1500 deliveries, each with its cursor synced, on a slow disk.
    eventually(what, EVENTUALLY, async || {
        let received = received.lock().unwrap();
        if check(&received) {
            Ok(())
        } else {
            let got: Vec<_> = received.iter().map(|r| (&r.0, &r.1)).collect();
            Err(Observed(format!("got {got:?}")))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_with_one_id_recorded_and_not_repeated_after_a_restart() {
    let (base, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let secret = "a-secret-of-enough-length";

    // Bad registrations are precise 400s and register nothing.
    for (body, detail) in [
        (
            json!({"url": "ftp://example.com/x", "secret": secret}),
            "only http and https",
        ),
        (json!({"url": format!("{base}/flaky")}), "secret: required"),
        (
            json!({"url": format!("{base}/flaky"), "secret": "short"}),
            "secret: between 16 and 256 bytes",
        ),
        (
            json!({"url": format!("{base}/flaky"), "secret": secret, "kinds": ["low"]}),
            "`low` is not one of low_stock, out_of_stock",
        ),
        (
            json!({"url": format!("{base}/flaky"), "secret": secret, "colour": "red"}),
            "unknown field `colour`",
        ),
    ] {
        let (status, problem) = post(&running, "/v1/webhooks", body).await;
        assert_eq!(status, 400, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{problem}"
        );
    }
    let (status, flaky) = post(
        &running,
        "/v1/webhooks",
        json!({"url": format!("{base}/flaky"), "secret": secret, "kinds": ["low_stock"]}),
    )
    .await;
    assert_eq!(status, 201, "{flaky}");
    assert!(
        flaky.get("secret").is_none(),
        "the secret is never shown back"
    );
    let (_, down) = post(
        &running,
        "/v1/webhooks",
        json!({"url": format!("{base}/down"), "secret": secret}),
    )
    .await;
    let listed = get(&running, "/v1/webhooks").await;
    assert_eq!(listed["webhooks"].as_array().unwrap().len(), 2);

    let (status, _) = post(
        &running,
        "/v1/items",
        json!({"sku": "A", "name": "A", "price": "1", "reorder_point": 5, "stock": {"madrid": 10}}),
    )
    .await;
    assert_eq!(status, 202);
    adjust(&running, -6).await;

    // The flaky receiver fails twice, then takes the third attempt: one delivery id throughout.
    until(&received, "three attempts at /flaky", |r| {
        r.iter().filter(|r| r.0 == "/flaky").count() == 3
    })
    .await;
    let flaky_requests: Vec<_> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == "/flaky")
        .cloned()
        .collect();
    let delivery_id = &flaky_requests[0].1;
    assert!(
        delivery_id.starts_with(flaky["id"].as_str().unwrap()),
        "{delivery_id}"
    );
    assert!(
        flaky_requests.iter().all(|r| &r.1 == delivery_id),
        "the same delivery id on every attempt"
    );
    for (_, _, signature, event_type, body) in &flaky_requests {
        assert_eq!(
            signature,
            &stockflow_sinks::webhooks::sign(secret.as_bytes(), body),
            "the signature verifies"
        );
        assert_eq!(event_type, "alert.low_stock.raised");
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            (event["sku"].as_str(), event["available"].as_i64()),
            (Some("A"), Some(4))
        );
    }
    let deliveries = get(
        &running,
        &format!("/v1/webhooks/{}/deliveries", flaky["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        deliveries["deliveries"][0]["status"], "delivered",
        "{deliveries}"
    );
    assert_eq!(deliveries["deliveries"][0]["attempts"], 3);

    // The receiver that is down gets every attempt, then the delivery is recorded as failed.
    until(&received, "three attempts at /down", |r| {
        r.iter().filter(|r| r.0 == "/down").count() == 3
    })
    .await;
    let down_id = down["id"].as_str().unwrap();
    let failed = Client::new(&running)
        .get_until(
            &format!("/v1/webhooks/{down_id}/deliveries"),
            |_, deliveries| deliveries["deliveries"][0]["status"] == "failed",
        )
        .await;
    assert_eq!(
        (
            failed["deliveries"][0]["status"].as_str(),
            failed["deliveries"][0]["response_status"].as_u64()
        ),
        (Some("failed"), Some(503)),
        "{failed}"
    );
    let metrics = metrics(&running).await;
    assert!(
        metrics.contains(&format!(
            "stockflow_webhook_attempts_total{{outcome=\"failed\",webhook=\"{down_id}\"}} 1"
        )),
        "{metrics}"
    );

    // Deleting stops deliveries to it.
    let (status, _) = Client::new(&running)
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{down_id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, 204);
    stop(running).await;

    // After a restart the registration and the cursor are still there: the
    // delivered alert is not delivered again; the next one is, once.
    let running = start(dir.path()).await;
    assert_eq!(
        get(&running, "/v1/webhooks").await["webhooks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    adjust(&running, 6).await;
    until(&received, "the clear, on its third attempt", |r| {
        r.iter()
            .filter(|r| r.3 == "alert.low_stock.cleared")
            .count()
            == 3
    })
    .await;
    // Time for a fourth attempt, or a delivery to the deleted webhook, to show, were there one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = received.lock().unwrap().clone();
    let flaky: Vec<&String> = received
        .iter()
        .filter(|r| r.0 == "/flaky")
        .map(|r| &r.3)
        .collect();
    assert_eq!(
        flaky,
        [
            &["alert.low_stock.raised"; 3][..],
            &["alert.low_stock.cleared"; 3][..]
        ]
        .concat()
    );
    assert_eq!(
        received.iter().filter(|r| r.0 == "/down").count(),
        3,
        "a deleted webhook gets nothing more"
    );
    stop(running).await;
}

/// Registers a webhook of the default tenant; the answer's status and body.
async fn register(running: &Running, url: &str) -> (u16, Value) {
    post(
        running,
        "/v1/webhooks",
        json!({"url": url, "secret": "a-secret-of-enough-length"}),
    )
    .await
}

/// Appends alert events straight to the alerts topic: for each key, `count`
/// events numbered from `first` (`seq`), of the default tenant.
fn append_alerts(running: &Running, keys: &[&str], first: u64, count: u64) {
    let alerts = running.log.topic("alerts.events", 3).unwrap();
    for seq in first..first + count {
        for key in keys {
            let event = json!({
                "id": format!("{key}-{seq}"), "type": "alert.low_stock.raised", "tenant": "default",
                "kind": "low_stock", "sku": key, "seq": seq,
            });
            alerts
                .append(
                    format!("default/{key}").as_bytes(),
                    event.to_string().as_bytes(),
                    0,
                )
                .unwrap();
        }
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

async fn metrics(running: &Running) -> String {
    match Client::new(running).get("/metrics").await {
        (200, Value::String(text)) => text,
        (status, body) => panic!("GET /metrics: {status} {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_registers_webhooks_up_to_the_cap_and_then_gets_a_409_naming_the_option() {
    let (base, _) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start_with(dir.path(), |s| s.webhook_policy.per_tenant = 25).await;
    let mut refused = Vec::new();
    for n in 0..300 {
        let (status, answer) = register(&running, &format!("{base}/h{n}")).await;
        match status {
            201 => assert!(refused.is_empty(), "registered after a refusal: {answer}"),
            _ => refused.push((status, answer)),
        }
    }
    assert_eq!(refused.len(), 300 - 25, "25 registered, the rest refused");
    let (status, problem) = &refused[0];
    assert_eq!(*status, 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("tenant `default` has 25 webhooks")
            && detail.contains("--webhooks-per-tenant"),
        "{problem}"
    );
    assert_eq!(
        get(&running, "/v1/webhooks").await["webhooks"]
            .as_array()
            .unwrap()
            .len(),
        25
    );

    // The cap is per tenant; a deletion frees a place.
    let (status, other) = post(&running, "/v1/webhooks", json!({"url": format!("{base}/acme"), "secret": "a-secret-of-enough-length", "tenant": "acme"})).await;
    assert_eq!(status, 201, "{other}");
    let first = get(&running, "/v1/webhooks").await["webhooks"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = Client::new(&running)
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/webhooks/{first}"),
            None,
            &[],
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(register(&running, &format!("{base}/again")).await.0, 201);
    assert_eq!(register(&running, &format!("{base}/more")).await.0, 409);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_webhooks_share_one_reader_and_do_not_add_a_thread_each() {
    let (base, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let running = start_with(dir.path(), |s| s.webhook_policy.per_tenant = 200).await;
    let got_all = |seq: u64, hooks: usize| {
        move |r: &[(String, String, String, String, Vec<u8>)]| {
            let event = format!("A-{seq}");
            r.iter()
                .filter(|r| r.1.ends_with(&format!(":{event}")))
                .map(|r| &r.0)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == hooks
        }
    };
    for n in 0..10 {
        assert_eq!(register(&running, &format!("{base}/h{n}")).await.0, 201);
    }
    append_alerts(&running, &["A"], 0, 1);
    until(&received, "the first event at 10 webhooks", got_all(0, 10)).await;
    let before = threads();

    for n in 10..150 {
        assert_eq!(register(&running, &format!("{base}/h{n}")).await.0, 201);
    }
    append_alerts(&running, &["A"], 1, 1);
    until(
        &received,
        "the second event at 150 webhooks",
        got_all(1, 150),
    )
    .await;
    let after = threads();
    // A thread per webhook would be 140 more.
    assert!(
        after <= before + 8,
        "threads grew from {before} to {after} for 140 more webhooks"
    );
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        10 + 150,
        "each webhook got each event once after it registered"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_stops_answering_falls_behind_alone_and_catches_up_in_order() {
    let received: Received = Arc::default();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (log, stuck) = (received.clone(), gate.clone());
    // `/stuck` answers only once the gate opens; anything else at once.
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
        let (log, stuck) = (log.clone(), stuck.clone());
        async move {
            let delivery = headers
                .get("x-stockflow-delivery")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            log.lock().unwrap().push((
                uri.path().to_owned(),
                delivery,
                String::new(),
                String::new(),
                Vec::new(),
            ));
            if uri.path() == "/stuck" {
                let _open = stuck.acquire().await.unwrap();
            }
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let running = start_with(dir.path(), |s| {
        s.webhook_policy.timeout = Duration::from_secs(600)
    })
    .await;
    let (_, stuck) = register(&running, &format!("{base}/stuck")).await;
    let (_, fast) = register(&running, &format!("{base}/fast")).await;

    // More events than a webhook's queue holds.
    let keys = ["A", "B", "C"];
    let per_key = (stockflow::webhooks::QUEUE as u64 + 100) / keys.len() as u64 + 100;
    let total = per_key as usize * keys.len();
    append_alerts(&running, &keys, 0, per_key);
    until(
        &received,
        "every event at /fast while /stuck does not answer",
        |r| r.iter().filter(|r| r.0 == "/fast").count() == total,
    )
    .await;
    assert_eq!(
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == "/stuck")
            .count(),
        1,
        "one delivery waits at /stuck"
    );
    let stuck_id = stuck["id"].as_str().unwrap();
    let behind = format!("stockflow_webhook_behind_total{{webhook=\"{stuck_id}\"}} 1");
    let text = metrics(&running).await;
    assert!(text.contains(&behind), "{behind} in {text}");

    // Open: /stuck gets everything, once, in order per key.
    gate.add_permits(1 << 20);
    until(&received, "every event at /stuck", |r| {
        r.iter().filter(|r| r.0 == "/stuck").count() >= total
    })
    .await;
    append_alerts(&running, &keys, per_key, 1);
    // Every key's: keys may sit on different partitions, read at their own pace.
    until(&received, "the next event of every key at both", |r| {
        keys.iter()
            .map(|key| {
                r.iter()
                    .filter(|r| r.1.ends_with(&format!(":{key}-{per_key}")))
                    .count()
            })
            .sum::<usize>()
            == 2 * keys.len()
    })
    .await;
    let received = received.lock().unwrap().clone();
    for (path, id) in [
        ("/stuck", stuck_id),
        ("/fast", fast["id"].as_str().unwrap()),
    ] {
        for key in keys {
            let seqs: Vec<u64> = received
                .iter()
                .filter(|r| r.0 == path)
                .filter_map(|r| {
                    r.1.strip_prefix(&format!("{id}:{key}-"))
                        .map(|seq| seq.parse().unwrap())
                })
                .collect();
            assert_eq!(
                seqs,
                (0..=per_key).collect::<Vec<_>>(),
                "{path}, key {key}: each event once, in order"
            );
        }
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_targets_without_a_host_link_local_or_metadata_are_refused_whatever_the_lists() {
    let dir = tempfile::tempdir().unwrap();
    let everything: Vec<stockflow_sinks::webhooks::IpNet> =
        vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let running = start_with(dir.path(), |s| {
        s.webhook_policy.networks = Arc::new(stockflow_sinks::webhooks::Networks {
            allow: everything,
            deny: vec![],
        })
    })
    .await;
    for (url, detail) in [
        ("http:///hook", "url: `http:///hook` names no host"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "cloud metadata address",
        ),
        ("http://169.254.10.1/hook", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fd00:ec2::254]/latest", "cloud metadata address"),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            "cloud metadata address",
        ),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata address"),
    ] {
        let response = reqwest::Client::new()
            .post(format!("http://{}/v1/webhooks", running.addr))
            .json(&json!({"url": url, "secret": "a-secret-of-enough-length"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{url}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        let text = problem["detail"].as_str().unwrap();
        assert!(
            text.starts_with("url: ") && text.contains(detail),
            "{url}: {problem}"
        );
    }
    assert_eq!(
        get(&running, "/v1/webhooks").await["webhooks"],
        json!([]),
        "nothing registered"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_network_lists_refuse_at_registration_and_when_connecting() {
    let (base, received) = receiver().await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let loopback = || stockflow_sinks::webhooks::Networks {
        allow: vec![],
        deny: ["127.0.0.0/8", "::1/128"]
            .iter()
            .map(|n| stockflow_sinks::webhooks::parse_network(n).unwrap())
            .collect(),
    };

    // Denied: the literal address at registration, a name that resolves only there too.
    let dir = tempfile::tempdir().unwrap();
    let running = start_with(dir.path(), |s| {
        s.webhook_policy.networks = Arc::new(loopback())
    })
    .await;
    let (status, problem) = register(&running, &format!("{base}/denied")).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 is in 127.0.0.0/8, a denied network (--webhook-deny-network)"),
        "{problem}"
    );
    let (status, problem) = register(&running, &format!("http://localhost:{port}/denied")).await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("`localhost` resolves only to addresses webhooks may not reach"),
        "{problem}"
    );
    stop(running).await;

    // When connecting: a name is checked on the addresses it resolves to
    // then; a refusal is one attempt, not retried, counted `refused`.
    let policy = stockflow_sinks::webhooks::Policy {
        max_attempts: 5,
        first_backoff: Duration::from_millis(10),
        ..Default::default()
    };
    let hook = stockflow_sinks::webhooks::Webhook {
        id: "wh_direct".into(),
        url: format!("http://localhost:{port}/direct"),
        tenant: "default".into(),
        kinds: vec!["low_stock".into()],
        secret: "a-secret-of-enough-length".into(),
        created_at: String::new(),
    };
    let event = stockflow_sinks::webhooks::Outgoing {
        id: "e1",
        event_type: "alert.low_stock.raised",
        body: b"{}",
    };
    for (networks, expected, outcomes) in [
        (loopback(), "failed", vec!["refused"]),
        (
            stockflow_sinks::webhooks::Networks::default(),
            "delivered",
            vec!["delivered"],
        ),
    ] {
        let client = stockflow_sinks::webhooks::client(Arc::new(networks.clone())).unwrap();
        let policy = stockflow_sinks::webhooks::Policy {
            networks: Arc::new(networks),
            ..policy.clone()
        };
        let mut seen = Vec::new();
        let delivery = stockflow_sinks::webhooks::deliver(
            &client,
            &hook,
            event,
            &policy,
            &mut |outcome: &str| seen.push(outcome.to_owned()),
        )
        .await;
        assert_eq!(delivery.status, expected, "{delivery:?}");
        assert_eq!(seen, outcomes, "{delivery:?}");
        if expected == "failed" {
            assert_eq!(delivery.attempts, 1);
            assert!(
                delivery.error.as_deref().unwrap().starts_with("refused: "),
                "{delivery:?}"
            );
            assert!(
                received.lock().unwrap().iter().all(|r| r.0 != "/direct"),
                "nothing reached the receiver"
            );
        }
    }
    assert_eq!(
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == "/direct")
            .count(),
        1
    );

    // Allowed: only the listed network; link-local stays refused even when listed.
    let dir = tempfile::tempdir().unwrap();
    let allow = ["127.0.0.1/32", "169.254.0.0/16"]
        .iter()
        .map(|n| stockflow_sinks::webhooks::parse_network(n).unwrap())
        .collect();
    let running = start_with(dir.path(), |s| {
        s.webhook_policy.networks = Arc::new(stockflow_sinks::webhooks::Networks {
            allow,
            deny: vec![],
        })
    })
    .await;
    for (url, detail) in [
        (
            "http://127.0.0.2:9/x",
            "127.0.0.2 is in none of the allowed networks (--webhook-allow-network)",
        ),
        (
            "http://10.0.0.1/x",
            "10.0.0.1 is in none of the allowed networks",
        ),
        ("http://169.254.1.1/x", "link-local"),
    ] {
        let (status, problem) = register(&running, url).await;
        assert_eq!(status, 400, "{url}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{url}: {problem}"
        );
    }
    let (status, allowed) = register(&running, &format!("{base}/allowed")).await;
    assert_eq!(status, 201, "{allowed}");
    append_alerts(&running, &["A"], 0, 1);
    until(&received, "the event at /allowed", |r| {
        r.iter().any(|r| r.0 == "/allowed")
    })
    .await;
    stop(running).await;
}
