//! The write path against a real listening server (embedded log): commands
//! over HTTP, the decider, outcomes, read-your-writes tokens, idempotency,
//! concurrency and restarts.

use serde_json::{json, Value};
use stockflow::settings::Settings;

const COMMANDS: &str = "inventory.commands";

mod common;

fn settings(dir: &std::path::Path, workers: usize) -> Settings {
    common::local_settings(dir, workers)
}

use common::{stop, Client, Server};

impl Client {
    /// Posts a command that must be accepted for deciding; returns its answer.
    async fn command(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, 202, "{path}: {answer}");
        answer
    }

    /// The outcome of a command, once its token is reflected.
    async fn outcome(&self, answer: &Value) -> Value {
        let (status, outcome) = self
            .get(&format!(
                "/v1/commands/{}?after={}",
                answer["command_id"].as_str().unwrap(),
                answer["token"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, 200, "{outcome}");
        outcome
    }
}

/// An order once decided (a saga takes two epochs after its command).
async fn decided(client: &Client, id: &str) -> Value {
    client
        .get_until(&format!("/v1/orders/{id}"), |status, order| {
            status == 200 && order["status"] != "pending"
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_decided_and_readable_after_their_token() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 2)).start().await;
    let client = Client::new(&running);

    let created = client.command("/v1/items", json!({"sku": "A", "name": "Kettle", "price": "24.99", "category": "home", "stock": {"m": 5}})).await;
    // Read-your-writes: with the token, the first read already shows the command's effect.
    let (status, stock) = client
        .get(&format!(
            "/v1/stock/A?after={}",
            created["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{stock}");
    assert_eq!(stock["totals"]["on_hand"], 5);
    assert_eq!(client.outcome(&created).await["status"], "accepted");

    let reserved = client
        .command(
            "/v1/stock/A/reserve",
            json!({"location": "m", "qty": 3, "reservation_id": "r1"}),
        )
        .await;
    assert_eq!(reserved["reservation_id"], "r1");
    let outcome = client.outcome(&reserved).await;
    assert_eq!(outcome["status"], "accepted", "{outcome}");
    assert_eq!(outcome["events"][0]["type"], "stock.reserved");
    let (_, stock) = client
        .get(&format!(
            "/v1/stock/A?after={}",
            reserved["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (
            stock["totals"]["reserved"].as_i64(),
            stock["totals"]["available"].as_i64()
        ),
        (Some(3), Some(2))
    );

    // Valid commands that cannot apply are rejected outcomes, with the reason.
    let cases = [
        (
            "/v1/stock/A/reserve",
            json!({"location": "m", "qty": 3}),
            "insufficient stock of A at m: available 2, requested 3",
        ),
        (
            "/v1/stock/A/reserve",
            json!({"location": "m", "qty": 1, "reservation_id": "r1"}),
            "reservation r1 already exists",
        ),
        (
            "/v1/stock/A/adjust",
            json!({"location": "m", "qty": -4}),
            "adjusting A at m by -4 would leave on_hand 1 below reserved 3",
        ),
        (
            "/v1/stock/A/commit",
            json!({"reservation_id": "nope"}),
            "unknown reservation nope of A",
        ),
        (
            "/v1/stock/A/adjust",
            json!({"location": "m", "qty": 1, "expected_version": 0}),
            "version mismatch on A: expected 0, current 2",
        ),
        (
            "/v1/items",
            json!({"sku": "A", "name": "Again", "price": 1}),
            "item A already exists",
        ),
        (
            "/v1/items/B",
            json!({"name": "Nobody"}),
            "item B does not exist",
        ),
    ];
    for (path, body, reason) in cases {
        let answer = if path == "/v1/items/B" {
            let (status, answer) = client
                .send(reqwest::Method::PATCH, path, Some(body), &[])
                .await;
            assert_eq!(status, 202, "{answer}");
            answer
        } else {
            client.command(path, body).await
        };
        let outcome = client.outcome(&answer).await;
        assert_eq!(outcome["status"], "rejected", "{path}: {outcome}");
        assert_eq!(outcome["reason"], reason, "{path}");
    }

    let released = client
        .command("/v1/stock/A/release", json!({"reservation_id": "r1"}))
        .await;
    assert_eq!(client.outcome(&released).await["status"], "accepted");
    let again = client
        .command("/v1/stock/A/release", json!({"reservation_id": "r1"}))
        .await;
    assert_eq!(
        client.outcome(&again).await["reason"],
        "reservation r1 is already closed"
    );
    let committed = client
        .command(
            "/v1/stock/A/reserve",
            json!({"location": "m", "qty": 5, "reservation_id": "r2", "expected_version": 3}),
        )
        .await;
    assert_eq!(client.outcome(&committed).await["status"], "accepted");
    let commit = client
        .command("/v1/stock/A/commit", json!({"reservation_id": "r2"}))
        .await;
    assert_eq!(client.outcome(&commit).await["status"], "accepted");
    let (_, stock) = client
        .get(&format!(
            "/v1/stock/A?after={}",
            commit["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (
            stock["totals"]["on_hand"].as_i64(),
            stock["totals"]["reserved"].as_i64()
        ),
        (Some(0), Some(0)),
        "{stock}"
    );
    // The version reads show is the one expected_version is checked against.
    assert_eq!(
        stock["version"], 5,
        "created, reserved, released, reserved, committed: {stock}"
    );
    let stale = client
        .command(
            "/v1/stock/A/adjust",
            json!({"location": "m", "qty": 1, "expected_version": 4}),
        )
        .await;
    assert_eq!(
        client.outcome(&stale).await["reason"],
        "version mismatch on A: expected 4, current 5"
    );
    let current = client
        .command(
            "/v1/stock/A/adjust",
            json!({"location": "m", "qty": 1, "expected_version": 5}),
        )
        .await;
    assert_eq!(client.outcome(&current).await["status"], "accepted");

    // Outcomes are events in the event log too: the source of truth.
    let (_, unknown) = client.get("/v1/commands/never-sent").await;
    assert_eq!(unknown["status"], 404);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_reserve_every_line_or_release_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 2)).start().await;
    let client = Client::new(&running);
    for (sku, qty) in [("P", 5), ("Q", 1)] {
        let answer = client
            .command(
                "/v1/items",
                json!({"sku": sku, "name": sku, "price": 2, "stock": {"m": qty}}),
            )
            .await;
        client.outcome(&answer).await;
    }
    let line =
        |sku: &str, qty: i64| json!({"sku": sku, "location": "m", "qty": qty, "price": "2.50"});

    // Every line can be reserved: confirmed, and the stock stays reserved for it.
    let ok = client
        .command(
            "/v1/orders",
            json!({"order_id": "o-1", "customer_id": "ana", "lines": [line("P", 2), line("Q", 1)]}),
        )
        .await;
    assert_eq!(ok["order_id"], "o-1");
    let order = decided(&client, "o-1").await;
    assert_eq!(order["status"], "confirmed", "{order}");
    assert_eq!(order["total"], 7.5);
    assert_eq!(order["lines"].as_array().unwrap().len(), 2);

    // The second line cannot: the first is released and the order cancelled with the reason.
    let failing = client
        .command(
            "/v1/orders",
            json!({"customer_id": "ben", "lines": [line("P", 3), line("Q", 1)]}),
        )
        .await;
    let id = failing["order_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ord-"), "generated: {id}");
    let order = decided(&client, &id).await;
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(
        order["reason"],
        "line 1 (Q at m): insufficient stock of Q at m: available 0, requested 1"
    );
    let (_, p) = client.get("/v1/stock/P").await;
    assert_eq!(
        (
            p["totals"]["reserved"].as_i64(),
            p["totals"]["available"].as_i64()
        ),
        (Some(2), Some(3)),
        "nothing held by the cancelled order: {p}"
    );
    let (status, _) = client.get("/v1/orders/nope").await;
    assert_eq!(status, 404);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_problems_and_append_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let client = Client::new(&running);
    let huge = "x".repeat(70 * 1024);
    let cases: Vec<(&str, Option<Value>, &str, u16, &str)> = vec![
        (
            "/v1/stock/A/reserve",
            Some(json!({"location": "m", "qty": 0})),
            "application/json",
            400,
            "field `qty`: must be greater than 0",
        ),
        (
            "/v1/stock/A/reserve",
            Some(json!({"location": "m", "qty": -2})),
            "application/json",
            400,
            "field `qty`: must be greater than 0",
        ),
        (
            "/v1/stock/A/reserve",
            Some(json!({"location": "m"})),
            "application/json",
            400,
            "missing required field `qty`",
        ),
        (
            "/v1/stock/A/reserve",
            Some(json!({"location": "m", "qty": 1, "colour": "red"})),
            "application/json",
            400,
            "unknown field `colour`",
        ),
        (
            "/v1/stock/A/adjust",
            Some(json!({"location": "m", "qty": 1e30})),
            "application/json",
            400,
            "field `qty`: expected an integer",
        ),
        (
            "/v1/stock/A/adjust",
            Some(json!({"location": "m", "qty": 9_223_372_036_854_775_807i64})),
            "application/json",
            400,
            "beyond the limit",
        ),
        (
            "/v1/stock/SKU-THAT-IS-FAR-TOO-LONG-0123456789012345678901234567890123456789/adjust",
            Some(json!({"location": "m", "qty": 1})),
            "application/json",
            400,
            "path parameter sku: longer than 64 bytes",
        ),
        (
            "/v1/stock/A/adjust",
            Some(json!({"location": "m", "qty": 1})),
            "text/plain",
            415,
            "this route takes application/json",
        ),
        (
            "/v1/stock/A/adjust",
            Some(json!([1, 2])),
            "application/json",
            400,
            "expected a JSON object",
        ),
        (
            "/v1/stock/A/adjust",
            Some(json!({"location": "m", "qty": 1, "reason": huge})),
            "application/json",
            413,
            "more than the 65536",
        ),
        (
            "/v1/items",
            Some(json!({"sku": "B", "name": "x", "price": "1.23456"})),
            "application/json",
            400,
            "field `price`",
        ),
        (
            "/v1/items/B",
            Some(json!({})),
            "application/json",
            400,
            "give at least one of name, price, category, reorder_point, target_level",
        ),
        (
            "/v1/stock/A/release",
            Some(json!({})),
            "application/json",
            400,
            "missing required field `reservation_id`",
        ),
        (
            "/v1/stock/A/adjust?tenant=a/b",
            Some(json!({"location": "m", "qty": 1})),
            "application/json",
            400,
            "tenant",
        ),
        (
            "/v1/orders",
            Some(json!({"customer_id": "c", "lines": []})),
            "application/json",
            400,
            "must hold 1 to 1000 lines",
        ),
        (
            "/v1/stock/A/explode",
            Some(json!({"location": "m", "qty": 1})),
            "application/json",
            404,
            "no stock command `explode` (adjust, reserve, release, commit)",
        ),
        (
            "/v1/orders",
            Some(json!({"customer_id": "c", "lines": [{"sku": "A", "qty": 1}]})),
            "application/json",
            400,
            "missing required field `lines[0].price`",
        ),
    ];
    for (path, body, content_type, status, detail) in cases {
        let method = if path == "/v1/items/B" {
            reqwest::Method::PATCH
        } else {
            reqwest::Method::POST
        };
        let mut request = client
            .http
            .request(method, format!("{}{}", client.base, path))
            .header("content-type", content_type);
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let content = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{path}: {text}");
        assert_eq!(
            content.as_deref(),
            Some("application/problem+json"),
            "{path}"
        );
        assert!(
            text.contains(detail),
            "{path}: {text} should contain {detail}"
        );
    }
    let (status, problem) = client
        .send(
            reqwest::Method::POST,
            "/v1/stock/A/adjust",
            Some(json!({"location": "m", "qty": 1})),
            &[("idempotency-key", "a b")],
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    let commands = running.log.topic(COMMANDS, 3).unwrap();
    let appended: u64 = (0..3).map(|p| commands.end_offset(p)).sum();
    assert_eq!(appended, 0, "a rejected request appends nothing");
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_has_one_effect() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 2)).start().await;
    let client = Client::new(&running);
    let adjust = json!({"location": "m", "qty": 7, "reason": "restock"});
    let key = [("idempotency-key", "restock-2026-11-22")];
    let (s1, first) = client
        .send(
            reqwest::Method::POST,
            "/v1/stock/A/adjust",
            Some(adjust.clone()),
            &key,
        )
        .await;
    let (s2, second) = client
        .send(
            reqwest::Method::POST,
            "/v1/stock/A/adjust",
            Some(adjust.clone()),
            &key,
        )
        .await;
    let (s3, third) = client.post("/v1/stock/A/adjust", json!({"location": "m", "qty": 7, "reason": "restock", "command_id": "restock-2026-11-22"})).await;
    assert_eq!((s1, s2, s3), (202, 202, 202));
    assert_eq!(first["command_id"], "restock-2026-11-22");
    assert_eq!(first["command_id"], second["command_id"]);
    assert_eq!(first["command_id"], third["command_id"]);
    let after = [&first, &second, &third]
        .iter()
        .map(|a| a["token"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(",");
    let (_, stock) = client.get(&format!("/v1/stock/A?after={after}")).await;
    assert_eq!(
        stock["totals"]["on_hand"], 7,
        "three deliveries, one effect: {stock}"
    );
    let outcome = client.outcome(&third).await;
    assert_eq!(
        (
            outcome["status"].as_str(),
            outcome["events"].as_array().map(Vec::len)
        ),
        (Some("accepted"), Some(1)),
        "{outcome}"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_never_oversell() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 2)).start().await;
    let client = Client::new(&running);
    let created = client
        .command(
            "/v1/items",
            json!({"sku": "HOT", "name": "Hot item", "price": 10, "stock": {"m": 50}}),
        )
        .await;
    client.outcome(&created).await;
    // 64 clients at once want 2 each: demand 128, stock 50.
    let mut tasks = Vec::new();
    for n in 0..64 {
        let http = client.http.clone();
        let url = format!("{}/v1/stock/HOT/reserve", client.base);
        tasks.push(tokio::spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(json!({"location": "m", "qty": 2, "order_id": format!("o{n}")}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 202);
            response.json::<Value>().await.unwrap()
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let mut accepted = 0;
    for answer in &answers {
        let outcome = client.outcome(answer).await;
        match outcome["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("rejected") => assert!(
                outcome["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("insufficient stock"),
                "{outcome}"
            ),
            other => panic!("unexpected status {other:?}: {outcome}"),
        }
    }
    assert_eq!(accepted, 25, "exactly what the stock allows");
    let after = answers
        .iter()
        .map(|a| a["token"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(",");
    let (_, stock) = client.get(&format!("/v1/stock/HOT?after={after}")).await;
    assert_eq!(
        (
            stock["totals"]["reserved"].as_i64(),
            stock["totals"]["available"].as_i64()
        ),
        (Some(50), Some(0)),
        "{stock}"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_no_command_is_decided_twice() {
    let dir = tempfile::tempdir().unwrap();
    let commands: Vec<(String, Value)> = (0..20)
        .map(|n| match n % 3 {
            0 => (
                "/v1/stock/R/adjust".to_owned(),
                json!({"command_id": format!("c{n}"), "location": "m", "qty": 4}),
            ),
            1 => (
                "/v1/stock/R/reserve".to_owned(),
                json!({"command_id": format!("c{n}"), "location": "m", "qty": 3}),
            ),
            _ => (
                "/v1/stock/R/adjust".to_owned(),
                json!({"command_id": format!("c{n}"), "location": "m", "qty": -1}),
            ),
        })
        .collect();
    let mut before = Vec::new();
    {
        let running = Server::of(settings(dir.path(), 2)).start().await;
        let client = Client::new(&running);
        for (path, body) in &commands {
            let answer = client.command(path, body.clone()).await;
            let outcome = client.outcome(&answer).await;
            before.push((outcome["status"].clone(), outcome["reason"].clone()));
        }
        stop(running).await;
    }
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let client = Client::new(&running);
    let (_, stock_before) = {
        let answer = client.command(&commands[0].0, commands[0].1.clone()).await;
        client
            .get(&format!(
                "/v1/stock/R?after={}",
                answer["token"].as_str().unwrap()
            ))
            .await
    };
    let mut tokens = Vec::new();
    for (n, (path, body)) in commands.iter().enumerate() {
        let answer = client.command(path, body.clone()).await;
        let outcome = client.outcome(&answer).await;
        assert_eq!(
            (outcome["status"].clone(), outcome["reason"].clone()),
            before[n],
            "command c{n}: the same outcome as before the restart"
        );
        tokens.push(answer["token"].as_str().unwrap().to_owned());
    }
    let (_, stock_after) = client
        .get(&format!("/v1/stock/R?after={}", tokens.join(",")))
        .await;
    assert_eq!(
        stock_after["totals"], stock_before["totals"],
        "re-sent commands change nothing"
    );
    let accepted_adjusts: i64 = (0..20)
        .filter(|n| n % 3 != 1 && before[*n].0 == "accepted")
        .map(|n| if n % 3 == 0 { 4 } else { -1 })
        .sum();
    assert_eq!(
        stock_after["totals"]["on_hand"].as_i64(),
        Some(accepted_adjusts),
        "{stock_after}"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_takes_no_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut read_only = settings(dir.path(), 1);
    read_only.read_only = true;
    let running = Server::of(read_only).start().await;
    let client = Client::new(&running);
    let (status, problem) = client
        .post("/v1/stock/A/adjust", json!({"location": "m", "qty": 1}))
        .await;
    assert_eq!(status, 405, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("read-only"),
        "{problem}"
    );
    let (status, _) = client.get("/v1/stock?limit=1").await;
    assert_eq!(status, 200, "reads still work");
    stop(running).await;
}

impl Client {
    /// Sends `body` as it is written (a JSON text the `json!` macro could not
    /// hold, e.g. with a key twice); answers the status and the problem or answer.
    async fn send_text(&self, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

/// A command id names one request: its retries get the first answer, and the
/// same id for another request (route, sku or body) is a 409 naming the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_reused_for_another_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 2)).start().await;
    let client = Client::new(&running);
    client
        .command(
            "/v1/items",
            json!({"sku": "A", "name": "Kettle", "price": "24.99", "stock": {"m": 5}}),
        )
        .await;
    client
        .command(
            "/v1/items",
            json!({"sku": "B", "name": "Pan", "price": "9", "stock": {"m": 5}}),
        )
        .await;
    let key = [("idempotency-key", "k-1")];
    let reserve = json!({"location": "m", "qty": 1});
    let (status, first) = client
        .send(
            reqwest::Method::POST,
            "/v1/stock/A/reserve",
            Some(reserve.clone()),
            &key,
        )
        .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["reservation_id"], "res-k-1");
    let (status, again) = client
        .send(
            reqwest::Method::POST,
            "/v1/stock/A/reserve",
            Some(reserve.clone()),
            &key,
        )
        .await;
    assert_eq!(
        (status, &again),
        (202, &first),
        "a retry is answered as the first request was"
    );

    let others = [
        ("/v1/stock/A/reserve", json!({"location": "m", "qty": 2})),
        (
            "/v1/stock/A/reserve",
            json!({"location": "m", "qty": 1, "reservation_id": "mine"}),
        ),
        ("/v1/stock/B/reserve", reserve.clone()),
        ("/v1/stock/A/adjust", reserve.clone()),
    ];
    for (path, body) in others {
        let (status, problem) = client
            .send(reqwest::Method::POST, path, Some(body.clone()), &key)
            .await;
        assert_eq!(status, 409, "{path} {body}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("command id `k-1`") && detail.contains("stock.reserve of sku `A`"),
            "{path}: {detail}"
        );
        assert_eq!(problem["type"], "https://stockflow.dev/problems/conflict");
    }
    let outcome = client.outcome(&first).await;
    assert_eq!(
        outcome["events"][0]["qty"], 1,
        "the first request is the one decided: {outcome}"
    );
    let (_, stock) = client
        .get(&format!(
            "/v1/stock/B?after={}",
            first["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        stock["totals"]["reserved"], 0,
        "nothing of the refused requests applied: {stock}"
    );

    // Two keys on one request: which one is meant is not for the server to guess.
    let (status, problem) = client
        .send(
            reqwest::Method::POST,
            "/v1/stock/A/adjust",
            Some(reserve.clone()),
            &[("idempotency-key", "k-2"), ("idempotency-key", "k-3")],
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key: given more than once"),
        "{problem}"
    );

    // An order that names no order id: its retry names the same order.
    let order = json!({"customer_id": "ana", "lines": [{"sku": "A", "location": "m", "qty": 1, "price": 2}]});
    let (_, placed) = client
        .send(
            reqwest::Method::POST,
            "/v1/orders",
            Some(order.clone()),
            &[("idempotency-key", "o-1")],
        )
        .await;
    let (_, retried) = client
        .send(
            reqwest::Method::POST,
            "/v1/orders",
            Some(order),
            &[("idempotency-key", "o-1")],
        )
        .await;
    assert_eq!(
        placed["order_id"], retried["order_id"],
        "{placed} {retried}"
    );
    stop(running).await;
}

/// A key given twice in a JSON body is refused with the key named, at any
/// depth and on every route with a body, before anything is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_key_given_twice_is_a_400_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let client = Client::new(&running);
    let cases = [
        (
            reqwest::Method::POST,
            "/v1/stock/A/adjust",
            r#"{"location":"m","qty":1,"qty":999}"#,
            "field `qty` given twice",
        ),
        (
            reqwest::Method::POST,
            "/v1/items",
            r#"{"sku":"A","name":"n","price":1,"stock":{"m":1,"m":9}}"#,
            "field `stock.m` given twice",
        ),
        (
            reqwest::Method::PATCH,
            "/v1/items/A",
            r#"{"name":"n","name":"m"}"#,
            "field `name` given twice",
        ),
        (
            reqwest::Method::POST,
            "/v1/orders",
            r#"{"customer_id":"c","lines":[{"sku":"A","qty":1,"price":1,"qty":5}]}"#,
            "field `lines[0].qty` given twice (in `lines[0]`)",
        ),
        (
            reqwest::Method::POST,
            "/v1/webhooks",
            r#"{"url":"http://127.0.0.1:9/a","secret":"0123456789abcdef","url":"http://127.0.0.1:9/b"}"#,
            "field `url` given twice",
        ),
    ];
    for (method, path, body, detail) in cases {
        let (status, problem) = client.send_text(method, path, body).await;
        assert_eq!(status, 400, "{path} {body}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{path}: {problem}"
        );
    }
    let commands = running.log.topic(COMMANDS, 3).unwrap();
    assert_eq!(
        (0..3).map(|p| commands.end_offset(p)).sum::<u64>(),
        0,
        "nothing appended"
    );
    let (status, hooks) = client.get("/v1/webhooks").await;
    assert_eq!(
        (status, hooks["webhooks"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{hooks}"
    );
    stop(running).await;
}

/// Skus and ids `.` and `..` could never be read back through a URL (clients
/// normalise them away): refused; an error about a path parameter names the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_names_are_refused_and_path_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let client = Client::new(&running);
    let cases = [
        (
            "/v1/items",
            json!({"sku": "..", "name": "n", "price": 1}),
            &[][..],
            "field `sku`: `..` is not allowed",
        ),
        (
            "/v1/items",
            json!({"sku": ".", "name": "n", "price": 1}),
            &[][..],
            "field `sku`: `.` is not allowed",
        ),
        (
            "/v1/stock/A/adjust",
            json!({"location": "..", "qty": 1}),
            &[][..],
            "field `location`: `..` is not allowed",
        ),
        (
            "/v1/stock/A/adjust",
            json!({"location": "m", "qty": 1}),
            &[("idempotency-key", "..")][..],
            "command id: `..` is not allowed",
        ),
        (
            "/v1/stock/A/reserve",
            json!({"location": "m", "qty": 1, "reservation_id": "."}),
            &[][..],
            "`.` is not allowed",
        ),
        (
            "/v1/orders",
            json!({"customer_id": "c", "order_id": "..", "lines": [{"sku": "A", "qty": 1, "price": 1}]}),
            &[][..],
            "`..` is not allowed",
        ),
        (
            "/v1/stock/bad%20sku/adjust",
            json!({"location": "m", "qty": 1}),
            &[][..],
            "path parameter sku: character ' ' not allowed",
        ),
    ];
    for (path, body, headers, detail) in cases {
        let (status, problem) = client
            .send(reqwest::Method::POST, path, Some(body.clone()), headers)
            .await;
        assert_eq!(status, 400, "{path} {body}: {problem}");
        let text = problem["detail"].as_str().unwrap();
        assert!(text.contains(detail), "{path} {body}: {text}");
        assert!(
            !text.starts_with("body:") || !path.contains("%20"),
            "a path error names the path: {text}"
        );
    }
    let (status, problem) = client
        .send(
            reqwest::Method::PATCH,
            "/v1/items/bad%20sku",
            Some(json!({"name": "n"})),
            &[],
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("path parameter sku:"),
        "{problem}"
    );
    let (status, problem) = client.get("/v1/commands/a%20b").await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("path parameter id"),
        "{problem}"
    );
    stop(running).await;
}

/// Money is read from the text the client sent, never through a float: an
/// amount a JSON number holds exactly reads back as written; a larger one is
/// a 400 naming the field, not a silently different price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_reads_back_exactly_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 1)).start().await;
    let client = Client::new(&running);
    let (status, problem) = client
        .send_text(
            reqwest::Method::POST,
            "/v1/items",
            r#"{"sku":"BIG","name":"n","price":900719925474.0993}"#,
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("field `price`: `900719925474.0993` is beyond ±549755813887.9999"),
        "{problem}"
    );
    let (status, problem) = client
        .send_text(reqwest::Method::POST, "/v1/orders", r#"{"customer_id":"c","lines":[{"sku":"A","location":"m","qty":1,"price":900719925474.0993}]}"#)
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("field `lines[0].price`"),
        "{problem}"
    );

    for (sku, price) in [
        ("EDGE", "549755813887.9999"),
        ("FINE", "123456789012.3457"),
        ("EXP", "1.5e2"),
    ] {
        let body = format!(r#"{{"sku":"{sku}","name":"n","price":{price},"stock":{{"m":1}}}}"#);
        let (status, answer) = client
            .send_text(reqwest::Method::POST, "/v1/items", &body)
            .await;
        assert_eq!(status, 202, "{answer}");
        // The answer's text, not a float parse of it: the digits must be the client's.
        let url = format!(
            "{}/v1/items/{sku}?after={}",
            client.base,
            answer["token"].as_str().unwrap()
        );
        let text = client
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let shown = if price == "1.5e2" { "150.0" } else { price };
        assert!(
            text.contains(&format!(r#""price":{shown},"#)),
            "{sku}: {text}"
        );
    }
    stop(running).await;
}

/// A full disk, with the file-size limit standing in for it (a write past
/// it writes what fits, then fails with EFBIG, as a write to a full disk
/// fails with ENOSPC): every command answered 503 is one not applied, also
/// once there is room again; the answer names the command to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_answered_503_for_a_full_disk_is_never_applied() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit, Signal};
    // A handler, so that SIGXFSZ does not end the test's process (one of its own under nextest).
    let _handled = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
        Signal::XFSZ.as_raw(),
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = Server::of(settings(dir.path(), 2)).start().await;
    let client = Client::new(&running);
    let created = client
        .command(
            "/v1/items",
            json!({"sku": "A", "name": "Kettle", "price": "24.99", "stock": {"m": 100}}),
        )
        .await;
    client.outcome(&created).await;

    let limit = getrlimit(Resource::Fsize);
    setrlimit(
        Resource::Fsize,
        Rlimit {
            current: Some(1),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let mut refused = Vec::new();
    for _ in 0..20 {
        let (status, problem) = client
            .post(
                "/v1/stock/A/adjust",
                json!({"location": "m", "qty": -1, "reason": "sale"}),
            )
            .await;
        assert_eq!(status, 503, "{problem}");
        let id = problem["command_id"]
            .as_str()
            .unwrap_or_else(|| panic!("the 503 names the command: {problem}"))
            .to_owned();
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("command `{id}` was not appended"))
                && detail.contains(&format!("Idempotency-Key: {id}")),
            "{detail}"
        );
        refused.push(id);
    }
    setrlimit(Resource::Fsize, limit).unwrap();

    // Room again: five more, accepted; the twenty refused ones never apply.
    let mut last = Value::Null;
    for _ in 0..5 {
        last = client
            .command(
                "/v1/stock/A/adjust",
                json!({"location": "m", "qty": -1, "reason": "sale"}),
            )
            .await;
    }
    assert_eq!(client.outcome(&last).await["status"], "accepted");
    let (_, stock) = client
        .get(&format!(
            "/v1/stock/A?after={}",
            last["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        stock["totals"]["on_hand"], 95,
        "100 - the 5 accepted: {stock}"
    );
    for id in &refused {
        let (status, outcome) = client
            .get(&format!(
                "/v1/commands/{id}?after={}",
                last["token"].as_str().unwrap()
            ))
            .await;
        assert_eq!(status, 404, "a refused command is unknown: {outcome}");
    }
    stop(running).await;
}
