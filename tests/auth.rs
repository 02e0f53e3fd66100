//! API keys and tenant isolation against a real listening server: every
//! `/v1` route, with a tenant key, sees and changes its own tenant only;
//! 401 and 403 where each belongs; per-key rate limits; request deadlines;
//! request ids in the answer and in the JSON logs.

use reqwest::Method;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::time::Duration;
use stockflow::api_keys::ApiKeys;
use stockflow::settings::Settings;

mod common;
use common::{eventually, stop, Server, EVENTUALLY};

const ACME_WRITE: &str = "acme-write-6f1c2a9b7e";
const ACME_READ: &str = "acme-read-0d4e88a1c3";
const GLOBEX_ADMIN: &str = "globex-admin-5b7f31e2";
const ROOT: &str = "root-admin-9a2c4e6f80";

fn keys() -> String {
    format!(
        "{ACME_WRITE}:acme:write,{ACME_READ}:acme:read,{GLOBEX_ADMIN}:globex:admin,{ROOT}:*:admin"
    )
}

fn settings(dir: &std::path::Path) -> Settings {
    let mut settings = common::local_settings(dir, 1);
    settings.api_keys = Some(Arc::new(ApiKeys::parse(keys().split(',')).unwrap()));
    settings.rate_limit = None;
    settings
}

/// A client that sends one key (or none).
struct As<'a> {
    client: &'a common::Client,
    key: Option<&'a str>,
}

impl As<'_> {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let bearer = self.key.map(|key| format!("Bearer {key}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| ("authorization", b))
            .into_iter()
            .collect();
        self.client.send(method, path, body, &headers).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(Method::POST, path, Some(body)).await
    }
}

/// Asserts a problem+json answer with `status` whose detail holds `detail`.
fn problem(answer: &(u16, Value), status: u16, detail: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["status"], status, "{}", answer.1);
    let text = answer.1["detail"].as_str().unwrap_or_default();
    assert!(text.contains(detail), "detail `{text}` lacks `{detail}`");
}

/// The same sku in two tenants with different stock, an order and a webhook
/// in each; answers the globex order id, a globex command id and the globex
/// webhook id.
async fn seed(root: &As<'_>) -> (String, String, String) {
    let mut token = String::new();
    for (tenant, qty) in [("acme", 7), ("globex", 900)] {
        let (status, body) = root
            .post(
                &format!("/v1/items?tenant={tenant}"),
                json!({"sku": "SKU-1", "name": format!("{tenant} widget"), "price": 2.5, "category": "tools", "reorder_point": 5, "stock": {"main": qty}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let (status, body) = root
            .post(
                &format!("/v1/orders?tenant={tenant}"),
                json!({"customer_id": "c1", "order_id": format!("{tenant}-order"), "lines": [{"sku": "SKU-1", "location": "main", "qty": 1, "price": 2.5}]}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        token = body["token"].as_str().unwrap().to_owned();
    }
    let (status, adjusted) = root
        .post(
            "/v1/stock/SKU-1/adjust?tenant=globex",
            json!({"location": "main", "qty": 1}),
        )
        .await;
    assert_eq!(status, 202, "{adjusted}");
    let command = adjusted["command_id"].as_str().unwrap().to_owned();
    let hook = |tenant: &str| json!({"url": "http://127.0.0.1:9/hook", "secret": "a-secret-of-sixteen-bytes", "tenant": tenant});
    let (status, acme_hook) = root.post("/v1/webhooks", hook("acme")).await;
    assert_eq!(status, 201, "{acme_hook}");
    let (status, globex_hook) = root.post("/v1/webhooks", hook("globex")).await;
    assert_eq!(status, 201, "{globex_hook}");
    // Orders decided (confirmed) in both tenants before any check.
    let (status, order) = root
        .get(&format!(
            "/v1/orders/globex-order?tenant=globex&after={}&wait_ms=20000",
            adjusted["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{order}");
    let (status, _) = root
        .get(&format!(
            "/v1/orders/acme-order?tenant=acme&after={token}&wait_ms=20000"
        ))
        .await;
    assert_eq!(status, 200);
    let _ = acme_hook;
    (
        "globex-order".into(),
        command,
        globex_hook["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_key_sees_and_changes_its_own_tenant_only_route_by_route() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path())).start().await;
    let client = common::Client::new(&running);
    let root = As {
        client: &client,
        key: Some(ROOT),
    };
    let acme = As {
        client: &client,
        key: Some(ACME_WRITE),
    };
    let reader = As {
        client: &client,
        key: Some(ACME_READ),
    };
    let globex = As {
        client: &client,
        key: Some(GLOBEX_ADMIN),
    };
    let (globex_order, globex_command, globex_hook) = seed(&root).await;

    // Every read route: without `tenant`, the key's own; naming another, 403.
    let other = "tenant `globex`";
    for path in [
        "/v1/items",
        "/v1/items/SKU-1",
        "/v1/stock",
        "/v1/stock/SKU-1",
        "/v1/alerts",
        "/v1/replenishment",
        "/v1/kpis",
        "/v1/kpis/top-skus",
        "/v1/views",
        "/v1/orders/acme-order",
        "/v1/views/stock/changes",
        "/v1/alerts/stream",
    ] {
        let sep = if path.contains('?') { '&' } else { '?' };
        problem(
            &reader.get(&format!("{path}{sep}tenant=globex")).await,
            403,
            other,
        );
        problem(
            &reader
                .get(&format!("{path}{sep}tenant=acme&tenant=globex"))
                .await,
            403,
            other,
        );
    }
    let (status, item) = reader.get("/v1/items/SKU-1").await;
    assert_eq!(
        (status, item["item"]["name"].as_str()),
        (200, Some("acme widget")),
        "{item}"
    );
    let (status, stock) = reader.get("/v1/stock/SKU-1?tenant=acme").await;
    assert_eq!(
        (status, stock["totals"]["on_hand"].as_i64()),
        (200, Some(7)),
        "{stock}"
    );
    for listing in ["/v1/items", "/v1/stock", "/v1/kpis?window=day"] {
        let (status, body) = reader.get(listing).await;
        assert_eq!(status, 200, "{body}");
        let rows = body["rows"]
            .as_array()
            .or(body["kpis"].as_array())
            .unwrap_or_else(|| panic!("{listing}: {body}"));
        assert!(!rows.is_empty(), "{listing}: {body}");
        for row in rows {
            assert_ne!(row["tenant"], "globex", "{listing} leaked {row}");
        }
    }
    let (_, orders) = reader.get(&format!("/v1/orders/{globex_order}")).await;
    assert_eq!(orders["status"], 404, "{orders}");
    let (_, command) = reader.get(&format!("/v1/commands/{globex_command}")).await;
    assert_eq!(
        command["status"], 404,
        "a tenant key cannot see another tenant's command: {command}"
    );
    let (_, views) = reader.get("/v1/views").await;
    assert_eq!(
        views["views"][0]["rows"], 1,
        "a tenant key counts its own rows: {views}"
    );
    let (_, all_views) = root.get("/v1/views").await;
    assert_eq!(all_views["views"][0]["rows"], 2, "{all_views}");
    // Arrow pages follow the same rule.
    let arrow = client
        .http
        .get(format!("{}/v1/stock?tenant=globex", client.base))
        .header("authorization", format!("Bearer {ACME_READ}"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .send()
        .await
        .unwrap();
    assert_eq!(arrow.status().as_u16(), 403);

    // The change stream's snapshot holds the key's tenant only.
    let mut stream = client
        .http
        .get(format!("{}/v1/views/stock/changes", client.base))
        .header("authorization", format!("Bearer {ACME_READ}"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut text = String::new();
    while !text.contains("\"progress\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("the snapshot within 10 s")
            .unwrap()
            .expect("more");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l.get("row").is_some())
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0]["row"]["tenant"], "acme", "{text}");
    drop(stream);

    // Commands: another tenant is 403 and changes nothing; none is the key's own.
    let adjust = json!({"location": "main", "qty": 5});
    problem(
        &acme
            .post("/v1/stock/SKU-1/adjust?tenant=globex", adjust.clone())
            .await,
        403,
        other,
    );
    problem(
        &acme
            .post(
                "/v1/items?tenant=globex",
                json!({"sku": "X", "name": "x", "price": 1}),
            )
            .await,
        403,
        other,
    );
    problem(
        &acme
            .send(
                Method::PATCH,
                "/v1/items/SKU-1?tenant=globex",
                Some(json!({"name": "stolen"})),
            )
            .await,
        403,
        other,
    );
    problem(
        &acme
            .send(Method::DELETE, "/v1/items/SKU-1?tenant=globex", None)
            .await,
        403,
        other,
    );
    problem(
        &acme.post("/v1/orders?tenant=globex", json!({"customer_id": "c", "lines": [{"sku": "SKU-1", "location": "main", "qty": 1, "price": 1}]})).await,
        403,
        other,
    );
    let (status, answer) = acme.post("/v1/stock/SKU-1/adjust", adjust).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["status_url"].as_str().unwrap(),
        format!(
            "/v1/commands/{}?tenant=acme",
            answer["command_id"].as_str().unwrap()
        )
    );
    let token = answer["token"].as_str().unwrap();
    let (_, mine) = acme.get(&format!("/v1/stock/SKU-1?after={token}")).await;
    assert_eq!(mine["totals"]["on_hand"], 7 + 5, "{mine}");
    let (_, theirs) = root
        .get(&format!("/v1/stock/SKU-1?tenant=globex&after={token}"))
        .await;
    assert_eq!(
        theirs["totals"]["on_hand"],
        900 + 1,
        "globex untouched: {theirs}"
    );
    let (_, item) = root.get("/v1/items/SKU-1?tenant=globex").await;
    assert_eq!(item["item"]["name"], "globex widget");

    // Rights: a read key writes nothing; webhooks need admin.
    problem(
        &reader
            .post(
                "/v1/stock/SKU-1/adjust",
                json!({"location": "main", "qty": 1}),
            )
            .await,
        403,
        "has the `read` right; POST /v1/stock/{sku}/{command} needs `write`",
    );
    problem(&acme.get("/v1/webhooks").await, 403, "needs `admin`");

    // Webhooks: a tenant admin lists, reads and deletes its own only.
    let (status, hooks) = globex.get("/v1/webhooks").await;
    assert_eq!(status, 200, "{hooks}");
    let listed: Vec<&str> = hooks["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["globex"]);
    let (_, all) = root.get("/v1/webhooks?tenant=acme").await;
    let acme_hook = all["webhooks"][0]["id"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/webhooks/{acme_hook}"),
        format!("/v1/webhooks/{acme_hook}/deliveries"),
    ] {
        let (_, answer) = globex.get(&path).await;
        assert_eq!(answer["status"], 404, "{path}: {answer}");
    }
    let (_, answer) = globex
        .send(Method::DELETE, &format!("/v1/webhooks/{acme_hook}"), None)
        .await;
    assert_eq!(answer["status"], 404, "{answer}");
    let (status, _) = root
        .get(&format!("/v1/webhooks/{acme_hook}?tenant=acme"))
        .await;
    assert_eq!(status, 200, "acme's webhook survived");
    let (status, _) = globex.get(&format!("/v1/webhooks/{globex_hook}")).await;
    assert_eq!(status, 200);
    let hook = json!({"url": "http://127.0.0.1:9/other", "secret": "another-secret-of-16", "tenant": "acme"});
    problem(
        &globex.post("/v1/webhooks", hook).await,
        403,
        "scoped to tenant `globex`",
    );
    let (status, made) = globex
        .post(
            "/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/other", "secret": "another-secret-of-16"}),
        )
        .await;
    assert_eq!(
        (status, made["tenant"].as_str()),
        (201, Some("globex")),
        "{made}"
    );

    // An admin key names any tenant.
    let (status, stock) = root.get("/v1/stock/SKU-1?tenant=globex").await;
    assert_eq!(
        (status, stock["totals"]["on_hand"].as_i64()),
        (200, Some(901))
    );

    // /metrics (open) has what an operator watches, for what happened here.
    let metrics = client.get("/metrics").await.1;
    let metrics = metrics.as_str().unwrap();
    for family in [
        r#"stockflow_http_request_duration_seconds_bucket{route="/v1/stock/{sku}",status="200",le="0.005"}"#,
        r#"stockflow_http_requests_total{method="POST",route="/v1/stock/{sku}/{command}",status="403"}"#,
        r#"stockflow_events_in_total{topic="inventory.events"}"#,
        r#"stockflow_events_out_total{topic="inventory.commands"}"#,
        r#"stockflow_events_out_total{topic="inventory.events"}"#,
        r#"stockflow_source_lag{partition="0",topic="inventory.commands"}"#,
        "stockflow_epoch_latency_seconds_bucket",
        r#"stockflow_view_rows{view="stock"} 2"#,
        "stockflow_webhook_lag{webhook=",
        "stockflow_checkpoint_age_seconds",
        "stockflow_sink_lag_epochs",
        r#"stockflow_http_auth_denied_total{reason="tenant"}"#,
        r#"stockflow_http_auth_denied_total{reason="right"} 2"#,
    ] {
        assert!(metrics.contains(family), "/metrics lacks {family}");
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_a_wrong_key_is_401_and_operations_stay_open() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path())).start().await;
    let client = common::Client::new(&running);
    problem(
        &As {
            client: &client,
            key: None,
        }
        .get("/v1/stock")
        .await,
        401,
        "send `Authorization: Bearer <key>`",
    );
    problem(
        &As {
            client: &client,
            key: Some("not-a-key-we-know-at-all"),
        }
        .get("/v1/stock")
        .await,
        401,
        "not one this server knows",
    );
    problem(
        &client
            .send(
                Method::GET,
                "/v1/stock",
                None,
                &[("authorization", "Basic YWRtaW46YWRtaW4=")],
            )
            .await,
        401,
        "expected `Bearer <key>`",
    );
    let lower = format!("bearer {ROOT}");
    assert_eq!(
        client
            .send(
                Method::GET,
                "/v1/stock",
                None,
                &[("authorization", lower.as_str())]
            )
            .await
            .0,
        200,
        "the scheme is case-insensitive"
    );
    problem(
        &As {
            client: &client,
            key: None,
        }
        .post("/v1/items", json!({}))
        .await,
        401,
        "requires an API key",
    );
    let response = client
        .http
        .get(format!("{}/v1/items", client.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"stockflow\""
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    for open in ["/health", "/metrics"] {
        let (status, _) = client.get(open).await;
        assert_eq!(status, 200, "{open}");
    }
    let metrics = client.get("/metrics").await.1;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("stockflow_http_auth_denied_total{reason=\"missing\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stockflow_http_auth_denied_total{reason=\"unknown\"} 1"),
        "{metrics}"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_token_bucket_and_a_429_says_when_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.rate_limit = Some(3);
    let running = Server::of(settings).start().await;
    let client = common::Client::new(&running);
    let reader = As {
        client: &client,
        key: Some(ACME_READ),
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(reader.get("/v1/items").await.0);
    }
    // Three in the bucket (plus at most one refilled while the requests ran).
    assert!(statuses[..3].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let response = client
        .http
        .get(format!("{}/v1/items", client.base))
        .header("authorization", format!("Bearer {ACME_READ}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("over its limit of 3 requests a second"),
        "{body}"
    );
    // Another key is not held back.
    assert_eq!(
        As {
            client: &client,
            key: Some(ROOT)
        }
        .get("/v1/items")
        .await
        .0,
        200
    );
    // The bucket refills (three a second): the key is answered again.
    eventually(
        "the reader's bucket refilled",
        EVENTUALLY,
        async || match reader.get("/v1/items").await {
            (200, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        },
    )
    .await;
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_request_timeout_is_a_503_and_bodies_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.request_timeout = Duration::from_millis(300);
    let running = Server::of(settings).start().await;
    let client = common::Client::new(&running);
    let root = As {
        client: &client,
        key: Some(ROOT),
    };
    // A read waiting for a position the log will not reach for a while.
    let started = std::time::Instant::now();
    let answer = root
        .get("/v1/stock?after=inventory.events:0:1000000&wait_ms=20000")
        .await;
    problem(&answer, 503, "took longer than");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the deadline cut the 20 s wait"
    );
    let metrics = client.get("/metrics").await.1;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("stockflow_http_timeouts_total{route=\"/v1/stock\"} 1"),
        "{metrics}"
    );
    // A body over the limit: 413 problem, nothing registered.
    // Just over the limit, so the client has written it all when the server
    // answers (and then closes the connection: a client of its own, so no
    // later request reuses that connection).
    let huge = "x".repeat(stockflow::http::MAX_BODY_BYTES + 1024);
    let once = common::Client {
        http: reqwest::Client::new(),
        base: client.base.clone(),
    };
    let answer = As {
        client: &once,
        key: Some(ROOT),
    }
    .post(
        "/v1/webhooks",
        json!({"url": "http://127.0.0.1:9/x", "secret": huge, "tenant": "acme"}),
    )
    .await;
    assert_eq!(answer.0, 413, "{}", answer.1);
    assert_eq!(answer.1["status"], 413, "a problem: {}", answer.1);
    assert!(
        answer.1["detail"]
            .as_str()
            .unwrap()
            .contains("larger than the 1048576 bytes a request may have"),
        "{}",
        answer.1
    );
    let (_, hooks) = root.get("/v1/webhooks?tenant=acme").await;
    assert_eq!(hooks["webhooks"], json!([]));
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_that_every_log_line_of_it_carries() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "stockflow=debug")
        .env("STOCKFLOW_API_KEYS", keys())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The JSON log says where it listens.
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        let entry: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if let Some(addr) = entry["fields"]["addr"].as_str() {
            break addr.to_owned();
        }
    };
    let http = reqwest::Client::new();
    let answer = http
        .get(format!("http://{addr}/v1/stock"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    assert_eq!(answer.headers()["x-request-id"], "trace-me-42");
    let fresh = http
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    let generated = fresh.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        generated.starts_with("req_") && generated.len() == 20,
        "{generated}"
    );
    let bad = http
        .get(format!("http://{addr}/health"))
        .header("x-request-id", "no spaces or newlines allowed")
        .send()
        .await
        .unwrap();
    assert_ne!(
        bad.headers()["x-request-id"],
        "no spaces or newlines allowed"
    );
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let mut ours = Vec::new();
    for line in lines.map_while(Result::ok) {
        let entry: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if entry["span"]["request_id"] == "trace-me-42" {
            ours.push(
                entry["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    child.wait().unwrap();
    // The refusal and the answer, both under the request's id.
    assert!(ours.iter().any(|m| m == "request refused"), "{ours:?}");
    assert!(ours.iter().any(|m| m == "answered"), "{ours:?}");
}

#[test]
fn without_keys_only_loopback_unless_insecure_listen() {
    use stockflow::config::ServeArgs;
    let open = ServeArgs {
        listen: Some("0.0.0.0:8080".parse().unwrap()),
        ..Default::default()
    };
    let errors = Settings::resolve(&open, None).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("is not a loopback address and no API keys are configured")),
        "{errors:?}"
    );
    let keyed = ServeArgs {
        api_keys: Some(keys()),
        ..open.clone()
    };
    assert!(Settings::resolve(&keyed, None).is_ok());
    let insecure = ServeArgs {
        insecure_listen: true,
        ..open
    };
    assert!(Settings::resolve(&insecure, None).is_ok());
    let bad = ServeArgs {
        api_keys: Some("short:acme:read".into()),
        ..Default::default()
    };
    let errors = Settings::resolve(&bad, None).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("entry 1: the key has 5 characters")),
        "{errors:?}"
    );
    let timeout = ServeArgs {
        request_timeout: Some("10s".into()),
        ..Default::default()
    };
    let errors = Settings::resolve(&timeout, None).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("request_timeout: must be longer than the longest wait_ms")),
        "{errors:?}"
    );
}
