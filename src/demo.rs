//! The demo generator: a few tenants with stores and a few thousand SKUs,
//! then a steady stream of sales, restocks, reservations (committed or
//! released), returns and price changes, appended to the embedded log as
//! ordinary stockflow events.
//!
//! It looks at the published views before it sells, so the demo does not sell
//! what the shelf does not have; it restocks what runs low.

use crate::log::Topic;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Store;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_dataflows::model::{Name, StockKey};

/// One demo tenant: its stores and how many SKUs it sells.
struct TenantPlan {
    tenant: &'static str,
    skus: usize,
    locations: &'static [&'static str],
}

const TENANTS: &[TenantPlan] = &[
    TenantPlan {
        tenant: "default",
        skus: 2000,
        locations: &[
            "madrid-centro",
            "barcelona-diagonal",
            "valencia-puerto",
            "warehouse-central",
        ],
    },
    TenantPlan {
        tenant: "andina",
        skus: 800,
        locations: &["bogota-norte", "medellin-poblado", "warehouse-bogota"],
    },
    TenantPlan {
        tenant: "pacifico",
        skus: 400,
        locations: &["lima-miraflores", "warehouse-lima"],
    },
];

const CATEGORIES: &[(&str, &[&str])] = &[
    (
        "electronics",
        &[
            "Wireless Mouse",
            "USB-C Cable",
            "Headphones",
            "Power Bank",
            "Keyboard",
            "Webcam",
        ],
    ),
    (
        "grocery",
        &[
            "Coffee Beans",
            "Olive Oil",
            "Rice 5kg",
            "Green Tea",
            "Pasta",
            "Honey",
        ],
    ),
    (
        "apparel",
        &[
            "T-Shirt",
            "Jeans",
            "Rain Jacket",
            "Sneakers",
            "Wool Socks",
            "Cap",
        ],
    ),
    (
        "home",
        &[
            "Desk Lamp",
            "Towel Set",
            "Frying Pan",
            "Storage Box",
            "Cushion",
            "Mug",
        ],
    ),
    (
        "toys",
        &[
            "Puzzle 1000",
            "Building Blocks",
            "Plush Bear",
            "Board Game",
            "Kite",
            "Yo-yo",
        ],
    ),
];

/// A reservation waiting to be committed or released.
struct OpenReservation {
    tenant: &'static str,
    sku: String,
    id: String,
    /// The order the reservation holds stock for.
    order_id: String,
    due: Instant,
}

/// Runs the generator until shutdown: seeds the catalogue if the topic is
/// empty, then appends about `rate` events per second.
pub fn run(topic: Arc<Topic>, store: Arc<Store>, metrics: Metrics, shutdown: Shutdown, rate: u32) {
    let mut generator = Generator {
        rng: SmallRng::from_os_rng(),
        run: format!("{:08x}", rand::random::<u32>()),
        sequence: 0,
        open: VecDeque::new(),
        topic,
        metrics,
    };
    let empty = (0..generator.topic.partitions()).all(|p| generator.topic.end_offset(p) == 0);
    if empty {
        if let Err(error) = generator.seed() {
            tracing::error!(%error, "demo: seeding the catalogue failed");
            return;
        }
    } else {
        tracing::info!("demo: topic already holds events; continuing without re-seeding");
    }
    let tick = Duration::from_millis(50);
    let per_tick = (rate as f64 * tick.as_secs_f64()).max(1.0);
    let mut carry = 0.0;
    let mut next = Instant::now();
    while !shutdown.is_triggered() {
        next += tick;
        carry += per_tick;
        let count = carry as usize;
        carry -= count as f64;
        let snapshot = store.snapshot();
        let mut batch = Vec::with_capacity(count);
        for _ in 0..count {
            generator.next_event(&snapshot, &mut batch);
        }
        generator.release_due(&mut batch);
        if let Err(error) = generator.append(&batch) {
            tracing::warn!(%error, "demo: append failed; retrying next tick");
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

struct Generator {
    rng: SmallRng,
    run: String,
    sequence: u64,
    open: VecDeque<OpenReservation>,
    topic: Arc<Topic>,
    metrics: Metrics,
}

/// One event to append: tenant, sku, JSON body.
type Pending = (&'static str, String, serde_json::Value);

impl Generator {
    fn id(&mut self) -> String {
        self.sequence += 1;
        format!("demo-{}-{}", self.run, self.sequence)
    }

    fn sku(index: usize) -> String {
        format!("SKU-{index:05}")
    }

    fn seed(&mut self) -> Result<(), crate::source::SourceError> {
        let started = Instant::now();
        let mut batch = Vec::new();
        let mut total = 0;
        for plan in TENANTS {
            for index in 0..plan.skus {
                let (category, names) = CATEGORIES[index % CATEGORIES.len()];
                let name = format!(
                    "{} {}",
                    names[(index / CATEGORIES.len()) % names.len()],
                    index
                );
                let mut stock = serde_json::Map::new();
                for location in plan.locations {
                    stock.insert(location.to_string(), json!(self.rng.random_range(0..150)));
                }
                let cents: i64 = self.rng.random_range(199..49_999);
                let body = json!({
                    "id": self.id(), "type": "item.created", "tenant": plan.tenant, "ts": now_ms(),
                    "sku": Self::sku(index), "name": name, "category": category,
                    "price": format!("{}.{:02}", cents / 100, cents % 100),
                    "reorder_point": self.rng.random_range(5..25), "stock": stock,
                });
                batch.push((plan.tenant, Self::sku(index), body));
                if batch.len() == 500 {
                    total += batch.len();
                    self.append(&batch)?;
                    batch.clear();
                }
            }
        }
        total += batch.len();
        self.append(&batch)?;
        tracing::info!(
            items = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "demo: catalogue seeded"
        );
        Ok(())
    }

    /// Appends the next event (a reservation comes with the order it is for) to `batch`.
    fn next_event(&mut self, snapshot: &crate::store::Snapshot, batch: &mut Vec<Pending>) {
        let plan = &TENANTS[match self.rng.random_range(0..10) {
            0..=5 => 0,
            6..=8 => 1,
            _ => 2,
        }];
        // Best sellers sell most: a skewed pick favours the low sku numbers,
        // so the first page of /v1/stock moves visibly.
        let skew: f64 = self.rng.random::<f64>().powi(3);
        let sku = Self::sku(((skew * plan.skus as f64) as usize).min(plan.skus - 1));
        let location = plan.locations[self.rng.random_range(0..plan.locations.len())];
        let key = StockKey {
            tenant: Name::from(plan.tenant),
            sku: Name::from(sku.as_str()),
            location: Name::from(location),
        };
        let available = snapshot.stock.get(&key).map(|d| d.available()).unwrap_or(0);
        let id = self.id();
        let ts = now_ms();
        let roll = self.rng.random_range(0..100);
        let body = if available < 8 || roll < 8 {
            json!({"id": id, "type": "stock.adjusted", "tenant": plan.tenant, "ts": ts, "sku": sku, "location": location,
                   "qty": self.rng.random_range(20..120), "reason": "restock"})
        } else if roll < 70 {
            json!({"id": id, "type": "stock.adjusted", "tenant": plan.tenant, "ts": ts, "sku": sku, "location": location,
                   "qty": -self.rng.random_range(1..=available.min(3)), "reason": "sale"})
        } else if roll < 90 {
            let reservation_id = format!("res-{id}");
            let order_id = format!("ord-{id}");
            let qty = self.rng.random_range(1..=available.min(2));
            let price = snapshot
                .items
                .get(&stockflow_dataflows::model::SkuKey {
                    tenant: key.tenant.clone(),
                    sku: key.sku.clone(),
                })
                .map_or(stockflow_dataflows::model::Money::from_cents(999), |item| {
                    item.price
                });
            let total = price.checked_mul(qty).unwrap_or(price);
            batch.push((
                plan.tenant,
                sku.clone(),
                json!({"id": format!("{id}-order"), "type": "order.placed", "tenant": plan.tenant, "ts": ts, "order_id": order_id,
                       "customer_id": format!("customer-{}", self.rng.random_range(1..500)),
                       "lines": [{"sku": sku, "location": location, "qty": qty, "price": price}], "total": total}),
            ));
            self.open.push_back(OpenReservation {
                tenant: plan.tenant,
                sku: sku.clone(),
                id: reservation_id.clone(),
                order_id: order_id.clone(),
                due: Instant::now() + Duration::from_millis(self.rng.random_range(500..5000)),
            });
            json!({"id": id, "type": "stock.reserved", "tenant": plan.tenant, "ts": ts, "sku": sku, "location": location,
                   "qty": qty, "reservation_id": reservation_id, "order_id": order_id})
        } else if roll < 95 {
            json!({"id": id, "type": "stock.adjusted", "tenant": plan.tenant, "ts": ts, "sku": sku, "location": location,
                   "qty": 1, "reason": "return"})
        } else {
            let cents: i64 = self.rng.random_range(199..49_999);
            json!({"id": id, "type": "item.updated", "tenant": plan.tenant, "ts": ts, "sku": sku,
                   "price": format!("{}.{:02}", cents / 100, cents % 100)})
        };
        batch.push((plan.tenant, sku, body));
    }

    /// Commits (3 in 4: the order ships) or releases (the order is
    /// cancelled) the reservations whose time has come.
    fn release_due(&mut self, batch: &mut Vec<Pending>) {
        let now = Instant::now();
        while self.open.front().is_some_and(|r| r.due <= now) {
            let Some(reservation) = self.open.pop_front() else {
                break;
            };
            let released = self.rng.random_range(0..4) == 0;
            let (kind, status) = if released {
                ("stock.released", "order.cancelled")
            } else {
                ("stock.committed", "order.shipped")
            };
            let body = json!({"id": self.id(), "type": kind, "tenant": reservation.tenant, "ts": now_ms(), "reservation_id": reservation.id, "sku": reservation.sku});
            batch.push((reservation.tenant, reservation.sku.clone(), body));
            let order = json!({"id": self.id(), "type": status, "tenant": reservation.tenant, "ts": now_ms(), "order_id": reservation.order_id});
            batch.push((reservation.tenant, reservation.sku, order));
        }
    }

    fn append(&mut self, batch: &[Pending]) -> Result<(), crate::source::SourceError> {
        if batch.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = batch
            .iter()
            .map(|(tenant, key, body)| {
                (
                    format!("{tenant}/{key}").into_bytes(),
                    body.to_string().into_bytes(),
                )
            })
            .collect();
        let ts = now_ms();
        let records: Vec<(&[u8], &[u8], i64)> = encoded
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice(), ts))
            .collect();
        self.topic.append_batch(&records)?;
        for (tenant, _, _) in batch {
            self.metrics.demo_events.with_label_values(&[*tenant]).inc();
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
