//! Throughput of the stock dataflow alone (`stock` + `stock_totals`), of the
//! whole view pipeline (`dedup` + `items` + `stock` + `stock_totals`), and of
//! JSON decoding, on one worker thread.
//!
//! Run: `cargo bench --bench stock` (figures in events/s are the
//! "thrpt" lines; see docs/benchmarks.md for what we measured).

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use stockflow_dataflows::model::{decode_event, Event, EventBody, Money, Name, RecordContext};
use timely::dataflow::operators::probe::Handle;

const KEYS: usize = 100_000;
const EVENTS: usize = 1_000_000;

/// `EVENTS` events over `KEYS` (tenant, sku, location) keys. With `mixed`,
/// one in five events is part of a reservation (reserve, then commit or release).
fn events(mixed: bool) -> Vec<Event> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let tenants = [Name::from("default"), Name::from("andina")];
    let locations: Vec<Name> = (0..10)
        .map(|l| Name::from(format!("store-{l:02}")))
        .collect();
    let mut open: Vec<(Name, Name)> = Vec::new();
    (0..EVENTS)
        .map(|n| {
            let key = (next() as usize) % KEYS;
            let tenant = tenants[key % 2].clone();
            let sku = Name::from(format!("SKU-{:06}", key / 10));
            let location = locations[key % 10].clone();
            let body = if mixed && n % 5 == 0 {
                let reservation_id = Name::from(format!("r{n}"));
                open.push((tenant.clone(), reservation_id.clone()));
                EventBody::StockReserved {
                    sku,
                    location,
                    qty: 1,
                    reservation_id,
                    order_id: None,
                }
            } else if mixed && n % 5 == 1 && !open.is_empty() {
                let (_, reservation_id) = open.swap_remove((next() as usize) % open.len());
                if n % 3 == 0 {
                    EventBody::StockReleased { reservation_id }
                } else {
                    EventBody::StockCommitted { reservation_id }
                }
            } else {
                EventBody::StockAdjusted {
                    sku,
                    location,
                    qty: ((next() % 7) as i64 - 3) | 1,
                    reason: Name::from("sale"),
                }
            };
            Event {
                tenant,
                id: Name::from(format!("e{n}")),
                seq: n as u64,
                ts: 1_700_000_000_000 + n as i64,
                body,
            }
        })
        .collect()
}

/// Feeds `events` in epochs of `batch` through the views and waits for them.
fn run(events: Vec<Event>, batch: usize, full_pipeline: bool) {
    timely::execute_directly(move |worker| {
        let probe = Handle::new();
        let mut input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, events) =
                differential_dataflow::input::Input::new_collection::<Event, isize>(&scope);
            if full_pipeline {
                let events = stockflow_dataflows::dedup(
                    events,
                    None,
                    None,
                    stockflow_dataflows::dedup::DedupWindow::UNBOUNDED,
                    Default::default(),
                );
                stockflow_dataflows::items(events.clone()).probe_with(&probe);
                let stock = stockflow_dataflows::stock(events);
                stockflow_dataflows::stock_totals(stock.clone()).probe_with(&probe);
                stock.probe_with(&probe);
            } else {
                let stock = stockflow_dataflows::stock(events);
                stockflow_dataflows::stock_totals(stock.clone()).probe_with(&probe);
                stock.probe_with(&probe);
            }
            input
        });
        let mut epoch = 0;
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            for event in events.by_ref().take(batch) {
                input.insert(event);
            }
            epoch += 1;
            input.advance_to(epoch);
            input.flush();
            worker.step_while(|| probe.less_than(input.time()));
        }
    });
}

fn dataflows(c: &mut Criterion) {
    let adjust_only = events(false);
    let mixed = events(true);
    let mut group = c.benchmark_group("stock");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(EVENTS as u64));
    for batch in [1_000, 100_000] {
        group.bench_with_input(
            BenchmarkId::new("adjustments", batch),
            &batch,
            |b, &batch| {
                b.iter_batched(
                    || adjust_only.clone(),
                    |events| run(events, batch, false),
                    BatchSize::LargeInput,
                )
            },
        );
        group.bench_with_input(
            BenchmarkId::new("with-reservations", batch),
            &batch,
            |b, &batch| {
                b.iter_batched(
                    || mixed.clone(),
                    |events| run(events, batch, false),
                    BatchSize::LargeInput,
                )
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("pipeline");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("dedup+items+stock+totals/100000", |b| {
        b.iter_batched(
            || mixed.clone(),
            |events| run(events, 100_000, true),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn decoding(c: &mut Criterion) {
    let messages: Vec<Vec<u8>> = (0..10_000)
        .map(|n| {
            format!(r#"{{"id":"evt-{n}","type":"stock.adjusted","tenant":"default","ts":"2026-11-22T10:00:00.000Z","sku":"SKU-{:06}","location":"store-{:02}","qty":-2,"reason":"sale"}}"#, n % 5000, n % 10)
                .into_bytes()
        })
        .collect();
    let created = br#"{"id":"c1","type":"item.created","ts":0,"sku":"SKU-1","name":"Wireless Mouse","price":"24.99","category":"electronics","reorder_point":10,"stock":{"madrid":10,"lima":4}}"#;
    assert!(decode_event(created, RecordContext::default())
        .is_ok_and(|e| matches!(e.body, EventBody::ItemCreated { price, .. } if price == Money::parse("24.99").unwrap())));
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("stock.adjusted", |b| {
        b.iter(|| {
            for (offset, message) in messages.iter().enumerate() {
                let event = decode_event(
                    message,
                    RecordContext {
                        offset: offset as u64,
                        log_time: None,
                    },
                )
                .expect("valid");
                std::hint::black_box(event);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, dataflows, decoding);
criterion_main!(benches);
