//! `/openapi.json` against real answers: every answer of the document has a
//! schema (a JSON answer without one fails here), every documented read and
//! command is driven until it answers with data, and each answer (each event
//! and line of a stream) is validated against the schema the document gives
//! for its path, status and content type.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use stockflow::server::{Running, INVENTORY_EVENTS};

mod common;
use common::{append_events, eventually, stop, within, Client, Server, EVENTUALLY};

/// The media types whose answers are JSON (a stream's: each event's data, each line).
const JSON_TYPES: [&str; 4] = [
    "application/json",
    "application/problem+json",
    "text/event-stream",
    "application/x-ndjson",
];

/// The OpenAPI document and the answers checked against it.
struct Contract {
    document: Value,
    /// `(method, path template, status)` of every answer validated.
    checked: BTreeSet<(String, String, u16)>,
}

impl Contract {
    /// The schema of the answer `status` of `method path` for `media_type`.
    fn schema(&self, method: &str, template: &str, status: u16, media_type: &str) -> &Value {
        let response = &self.document["paths"][template][method]["responses"][status.to_string()];
        let schema = &response["content"][media_type]["schema"];
        assert!(
            !schema.is_null(),
            "{method} {template}: the document has no {media_type} schema for {status}: {response}"
        );
        schema
    }

    /// Validates `instance`, an answer of `method template` (one event or line
    /// of a stream), against its schema, `$ref`s resolved into the document's
    /// components.
    fn check(
        &mut self,
        method: &str,
        template: &str,
        status: u16,
        media_type: &str,
        instance: &Value,
    ) {
        let schema = self.schema(method, template, status, media_type).clone();
        // JSON Schema 2020-12 (OpenAPI 3.1's dialect); the components ride
        // along so that `#/components/schemas/...` resolves in this document.
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.document["components"],
            "allOf": [schema],
        });
        let validator = jsonschema::draft202012::new(&root)
            .unwrap_or_else(|e| panic!("{method} {template}: the schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("at `{}`: {e}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status} ({media_type}) does not match its schema:\n{}\nanswer: {instance}",
            errors.join("\n")
        );
        self.checked
            .insert((method.to_owned(), template.to_owned(), status));
    }
}

/// A request's answer: status, content type and body text.
async fn send(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    accept: Option<&str>,
) -> (u16, String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
    client.exchange(method, path, body, &headers).await
}

/// Sends a request, checks its JSON answer against the document (as the
/// answer of `template`) and returns it.
async fn call(
    contract: &mut Contract,
    client: &Client,
    method: reqwest::Method,
    template: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, content_type, text) = send(client, method.clone(), path, body, None).await;
    let media_type = content_type.split(';').next().unwrap().trim().to_owned();
    let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path}: {status} {content_type}: not JSON ({e}): {text}")
    });
    if status < 300 {
        // The typed answers write their fields in alphabetical order, as the
        // JSON values they replaced did: the bytes clients got are unchanged.
        assert_eq!(
            text,
            answer.to_string(),
            "{method} {path}: fields out of alphabetical order"
        );
    }
    let method = method.as_str().to_ascii_lowercase();
    contract.check(&method, template, status, &media_type, &answer);
    (status, answer)
}

/// Reads a stream until `done` holds for the JSON texts read so far (the
/// `data` of SSE events, or NDJSON lines); answers them.
async fn read_stream(
    client: &Client,
    path: &str,
    accept: &str,
    done: impl Fn(&[(String, Value)]) -> bool,
    meanwhile: impl std::future::Future<Output = ()>,
) -> Vec<(String, Value)> {
    let what = format!("GET {path} ({accept})");
    let mut response = within(
        &what,
        client
            .http
            .get(format!("{}{path}", client.base))
            .header("accept", accept)
            .send(),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(response.status(), 200, "{what}");
    let mut meanwhile = std::pin::pin!(meanwhile);
    let mut meanwhile_done = false;
    let mut buffer = String::new();
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    while !done(&items) {
        let chunk = tokio::select! {
            chunk = tokio::time::timeout_at(deadline, response.chunk()) => chunk,
            _ = &mut meanwhile, if !meanwhile_done => {
                meanwhile_done = true;
                continue;
            }
        };
        let chunk = chunk
            .unwrap_or_else(|_| panic!("{what}: not done within {EVENTUALLY:?}: {items:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: ended early: {items:?}"));
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        let separator = if accept == "text/event-stream" {
            "\n\n"
        } else {
            "\n"
        };
        while let Some(end) = buffer.find(separator) {
            let piece: String = buffer.drain(..end + separator.len()).collect();
            let (event, data) = if accept == "text/event-stream" {
                let field = |name: &str| {
                    piece
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_owned)
                };
                (
                    field("event: ").unwrap_or_default(),
                    field("data: ").unwrap_or_else(|| panic!("{what}: no data in {piece:?}")),
                )
            } else {
                (String::new(), piece.trim_end().to_owned())
            };
            let value: Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {data}"));
            assert_eq!(
                data,
                value.to_string(),
                "{what}: fields out of alphabetical order"
            );
            items.push((event, value));
        }
    }
    items
}

/// Appends JSON events to `topic` under one key; returns an `after` token covering them.
fn append(running: &Running, topic_name: &str, key: &str, events: &[Value]) -> String {
    append_events(
        running,
        topic_name,
        events.iter().map(|e| (key.to_owned(), e)),
    )
}

/// True when `schema` says nothing about the answer's shape: absent, `{}`, or
/// an object with no properties (utoipa's `body = Object`).
fn says_nothing(schema: &Value) -> bool {
    let Some(schema) = schema.as_object() else {
        return true;
    };
    let shapes = [
        "$ref",
        "properties",
        "oneOf",
        "anyOf",
        "allOf",
        "additionalProperties",
        "items",
    ];
    let typed_scalar = schema
        .get("type")
        .is_some_and(|t| t != "object" && t != &json!(["object"]));
    !typed_scalar && !shapes.iter().any(|k| schema.contains_key(*k))
}

/// Every answer in the document: a JSON answer has a schema that says
/// something, and every error answer is a problem.
fn check_document(document: &Value) {
    let mut missing = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let content = response["content"].as_object();
                let code: u16 = status.parse().unwrap();
                if code >= 400 {
                    let problem = &response["content"]["application/problem+json"]["schema"];
                    if problem["$ref"] != "#/components/schemas/Problem" {
                        missing.push(format!(
                            "{method} {path} {status}: not a Problem: {response}"
                        ));
                    }
                    continue;
                }
                let Some(content) = content else {
                    if code != 204 {
                        missing.push(format!("{method} {path} {status}: no content"));
                    }
                    continue;
                };
                for (media_type, media) in content {
                    if JSON_TYPES.contains(&media_type.as_str()) && says_nothing(&media["schema"]) {
                        missing.push(format!(
                            "{method} {path} {status} {media_type}: no schema: {media}"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "answers without a schema:\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_schema_less_answer_is_caught() {
    assert!(says_nothing(&json!({"type": "object"})));
    assert!(says_nothing(&json!({})));
    assert!(!says_nothing(&json!({"$ref": "#/components/schemas/Item"})));
    assert!(!says_nothing(&json!({"type": "string"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_its_schema_in_the_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::local(dir.path(), 1)
        .with(|settings| {
            // A webhook to nowhere: one attempt, recorded as failed.
            settings.webhook_policy.max_attempts = 1;
            settings.webhook_policy.first_backoff = Duration::from_millis(10);
        })
        .start_ready()
        .await;
    let client = Client::new(&running);
    let (status, _, text) = send(&client, reqwest::Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let document: Value = serde_json::from_str(&text).unwrap();
    check_document(&document);
    let mut contract = Contract {
        document: document.clone(),
        checked: BTreeSet::new(),
    };
    use reqwest::Method;
    contract.check("get", "/openapi.json", 200, "application/json", &document);

    // Operations.
    call(
        &mut contract,
        &client,
        Method::GET,
        "/health",
        "/health",
        None,
    )
    .await;
    call(
        &mut contract,
        &client,
        Method::GET,
        "/ready",
        "/ready",
        None,
    )
    .await;
    let (status, _, _) = send(&client, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, 200);
    contract
        .checked
        .insert(("get".into(), "/metrics".into(), 200));

    // A catalogue, with stock, a low-stock alert and orders.
    let token = append(
        &running,
        INVENTORY_EVENTS,
        "default/A",
        &[
            json!({"id": "e1", "type": "item.created", "sku": "A", "name": "Widget", "price": "9.99", "category": "tools", "reorder_point": 5, "target_level": 20, "stock": {"madrid": 10, "lima": 3}}),
        ],
    );
    let after = format!("after={token}");
    let (_, item) = call(
        &mut contract,
        &client,
        Method::GET,
        "/v1/items/{sku}",
        &format!("/v1/items/A?{after}"),
        None,
    )
    .await;
    assert_eq!(item["item"]["reorder_point"], 5);

    // Commands: each kind, then their outcomes.
    let mut tokens = Vec::new();
    let commands = [
        (
            Method::POST,
            "/v1/items",
            "/v1/items",
            Some(json!({"sku": "B", "name": "Bolt", "price": "0.10", "stock": {"madrid": 2}})),
        ),
        (
            Method::PATCH,
            "/v1/items/{sku}",
            "/v1/items/B",
            Some(json!({"price": "0.20"})),
        ),
        (
            Method::POST,
            "/v1/stock/{sku}/{command}",
            "/v1/stock/A/adjust",
            Some(json!({"location": "madrid", "qty": -8, "reason": "sale"})),
        ),
        (
            Method::POST,
            "/v1/stock/{sku}/{command}",
            "/v1/stock/A/reserve",
            Some(json!({"location": "lima", "qty": 1})),
        ),
        (
            Method::POST,
            "/v1/orders",
            "/v1/orders",
            Some(
                json!({"customer_id": "c-7", "lines": [{"sku": "A", "location": "madrid", "qty": 1, "price": "9.99"}]}),
            ),
        ),
        // Rejected: more than is available.
        (
            Method::POST,
            "/v1/stock/{sku}/{command}",
            "/v1/stock/A/reserve",
            Some(json!({"location": "lima", "qty": 1000})),
        ),
        (Method::DELETE, "/v1/items/{sku}", "/v1/items/B", None),
    ];
    let mut answers = Vec::new();
    for (method, template, path, body) in commands {
        let (status, answer) = call(&mut contract, &client, method, template, path, body).await;
        assert_eq!(status, 202, "{path}: {answer}");
        tokens.push(answer["token"].as_str().unwrap().to_owned());
        answers.push(answer);
    }
    let after = format!("after={}", tokens.join(","));
    let mut statuses = BTreeSet::new();
    for answer in &answers {
        let id = answer["command_id"].as_str().unwrap();
        let (_, outcome) = call(
            &mut contract,
            &client,
            Method::GET,
            "/v1/commands/{id}",
            &format!("/v1/commands/{id}?{after}"),
            None,
        )
        .await;
        statuses.insert(outcome["status"].as_str().unwrap().to_owned());
    }
    assert!(
        statuses.contains("accepted") && statuses.contains("rejected"),
        "{statuses:?}"
    );
    let order_id = answers[4]["order_id"].as_str().unwrap();
    let (_, order) = call(
        &mut contract,
        &client,
        Method::GET,
        "/v1/orders/{id}",
        &format!("/v1/orders/{order_id}?{after}"),
        None,
    )
    .await;
    assert!(order["lines"].is_array(), "{order}");

    // Reads, each with rows.
    for (template, path, rows) in [
        ("/v1/items", "/v1/items?limit=1", "rows"),
        ("/v1/stock", "/v1/stock?limit=1", "rows"),
        ("/v1/stock/{sku}", "/v1/stock/A", "locations"),
        ("/v1/views", "/v1/views", "views"),
        ("/v1/alerts", "/v1/alerts?state=all", "alerts"),
        ("/v1/replenishment", "/v1/replenishment", "suggestions"),
        ("/v1/kpis", "/v1/kpis", "rows"),
        ("/v1/kpis/top-skus", "/v1/kpis/top-skus", "skus"),
    ] {
        let (status, answer) = call(
            &mut contract,
            &client,
            Method::GET,
            template,
            &format!(
                "{path}{}{after}",
                if path.contains('?') { '&' } else { '?' }
            ),
            None,
        )
        .await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert!(
            !answer[rows].as_array().unwrap().is_empty(),
            "{path} answers with data: {answer}"
        );
    }
    // Answers that are null or empty when there is no data.
    call(
        &mut contract,
        &client,
        Method::GET,
        "/v1/kpis/top-skus",
        "/v1/kpis/top-skus?tenant=nobody",
        None,
    )
    .await;
    // A problem.
    let (status, _) = call(
        &mut contract,
        &client,
        Method::GET,
        "/v1/items/{sku}",
        "/v1/items/NONE",
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Webhooks: one to a port nobody listens on, so its delivery fails.
    let url = format!("http://127.0.0.1:{}/hook", common::free_port());
    let (status, hook) = call(
        &mut contract,
        &client,
        Method::POST,
        "/v1/webhooks",
        "/v1/webhooks",
        Some(json!({"url": url, "secret": "a-secret-of-enough-length"})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let id = hook["id"].as_str().unwrap().to_owned();
    call(
        &mut contract,
        &client,
        Method::GET,
        "/v1/webhooks",
        "/v1/webhooks",
        None,
    )
    .await;
    call(
        &mut contract,
        &client,
        Method::GET,
        "/v1/webhooks/{id}",
        &format!("/v1/webhooks/{id}"),
        None,
    )
    .await;

    // Streams: a snapshot row, progress and a heartbeat in both formats; an
    // alert event (the alert of A cleared by a restock) on the alert stream.
    for accept in ["text/event-stream", "application/x-ndjson"] {
        let items = read_stream(
            &client,
            "/v1/views/stock/changes?heartbeat_ms=100",
            accept,
            |items| {
                items.iter().any(|(_, v)| v.get("row").is_some())
                    && items
                        .iter()
                        .any(|(e, v)| e == "heartbeat" || v.get("heartbeat").is_some())
            },
            async {},
        )
        .await;
        for (_, item) in &items {
            contract.check("get", "/v1/views/{view}/changes", 200, accept, item);
        }
    }
    let mut restocks = 0;
    for accept in ["text/event-stream", "application/x-ndjson"] {
        // Clears (then, the second time, raises) the alert of A at madrid.
        restocks += 1;
        let qty = if restocks == 1 { 30 } else { -30 };
        let restock = async {
            let (status, _) = client
                .post(
                    "/v1/stock/A/adjust",
                    json!({"location": "madrid", "qty": qty, "reason": "restock"}),
                )
                .await;
            assert_eq!(status, 202);
        };
        let items = read_stream(
            &client,
            "/v1/alerts/stream?heartbeat_ms=100",
            accept,
            |items| {
                items.iter().any(|(_, v)| v.get("type").is_some())
                    && items
                        .iter()
                        .any(|(e, v)| e == "heartbeat" || v.get("heartbeat").is_some())
            },
            restock,
        )
        .await;
        for (_, item) in &items {
            contract.check("get", "/v1/alerts/stream", 200, accept, item);
        }
    }

    // The webhook's delivery of those alerts, failed.
    let deliveries = format!("/v1/webhooks/{id}/deliveries");
    eventually("a delivery is recorded", EVENTUALLY, async || {
        let (_, answer) = client.get(&deliveries).await;
        !answer["deliveries"].as_array().unwrap().is_empty()
    })
    .await;
    call(
        &mut contract,
        &client,
        Method::GET,
        "/v1/webhooks/{id}/deliveries",
        &deliveries,
        None,
    )
    .await;

    // Every documented operation but DELETE (whose answers have no body) was
    // checked with a 2xx answer.
    let mut unchecked = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let answered = contract
                .checked
                .iter()
                .any(|(m, p, s)| m == method && p == path && *s < 300);
            if method != "delete" && !answered {
                unchecked.push(format!("{method} {path}"));
            }
        }
    }
    assert!(unchecked.is_empty(), "not driven: {unchecked:?}");
    stop(running).await;
}
