//! Random event histories for the property tests: late timestamps,
//! duplicates, deletions, releases before their reservation, absolute levels
//! whose versions arrive out of order.
#![allow(dead_code)]

use proptest::prelude::*;
use stockflow_dataflows::model::{Event, EventBody, Money, Name};

/// One step of a history: (kind, tenant, sku, location, reservation, qty, ts).
pub type Step = (u8, usize, usize, usize, usize, i64, i64);

pub fn history(steps: &[Step]) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for (n, &(kind, tenant, sku, location, reservation, qty, ts)) in steps.iter().enumerate() {
        let sku_name = Name::from(format!("sku-{sku}"));
        let location_name = Name::from(format!("loc-{location}"));
        let reservation_id = Name::from(format!("r-{reservation}"));
        let body = match kind {
            0 => EventBody::ItemCreated {
                sku: sku_name,
                name: format!("Item {n}"),
                price: Money::from_cents(100 + n as i64),
                category: Name::from(["tools", "food"][n % 2]),
                reorder_point: if n % 3 == 0 { None } else { Some(qty.abs()) },
                target_level: (n % 4 == 1).then_some(qty.abs() * 3),
                initial: if qty > 0 {
                    vec![(location_name, qty)]
                } else {
                    Vec::new()
                },
            },
            1 => EventBody::ItemUpdated {
                sku: sku_name,
                name: (n % 2 == 0).then(|| format!("Renamed {n}")),
                price: (n % 3 == 0).then(|| Money::from_cents(n as i64)),
                category: None,
                reorder_point: (n % 2 == 1).then_some(qty.abs()),
                target_level: (n % 5 == 1).then_some(qty.abs() * 2),
            },
            2 => EventBody::ItemDeleted { sku: sku_name },
            3..=5 => EventBody::StockAdjusted {
                sku: sku_name,
                location: location_name,
                qty: if qty == 0 { 1 } else { qty },
                reason: Name::from("count"),
            },
            6 => EventBody::StockReserved {
                sku: sku_name,
                location: location_name,
                qty: qty.abs() + 1,
                reservation_id,
                order_id: None,
            },
            7 => EventBody::StockReleased { reservation_id },
            8 => EventBody::StockCommitted { reservation_id },
            9 | 10 => EventBody::StockLevel {
                sku: sku_name,
                location: location_name,
                on_hand: qty.abs() + 2,
                reserved: qty.abs() / 2,
                version: reservation as u64 + 1,
            },
            _ => {
                // A redelivery: an earlier event again, later in the log.
                if let Some(original) = events.get(reservation * 7 % events.len().max(1)).cloned() {
                    events.push(Event {
                        seq: n as u64,
                        ..original
                    });
                }
                continue;
            }
        };
        events.push(Event {
            tenant: Name::from(["default", "acme"][tenant]),
            id: Name::from(format!("e{n}")),
            ts,
            seq: n as u64,
            body,
        });
    }
    events
}

pub fn split(events: Vec<Event>, cuts: &[bool]) -> Vec<Vec<Event>> {
    let mut epochs = vec![Vec::new()];
    for (i, event) in events.into_iter().enumerate() {
        if cuts.get(i).copied().unwrap_or(false) {
            epochs.push(Vec::new());
        }
        epochs.last_mut().unwrap().push(event);
    }
    epochs
}

pub fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            0u8..12,
            0usize..2,
            0usize..4,
            0usize..3,
            0usize..5,
            -5i64..8,
            0i64..50,
        ),
        1..80,
    )
}
