//! Property test of the gauges' bookkeeping ([`GaugeBook`]): random
//! sequences of catalogue rows, stock totals and alert transitions over a
//! few tenants and skus, applied in random batches as the publisher applies
//! them (each batch's changed skus, then the book's moves). After *every*
//! batch the gauges equal a from-scratch sum over the current views, the
//! book keeps exactly the skus that contribute, it hands back no empty move,
//! and only the skus with an alert transition looked their alerts up.
//!
//! The oracle below is slow and obvious and shares no code with the book.

use proptest::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use stockflow_dataflows::kpis::{GaugeBook, Gauges, SkuLookup};
use stockflow_dataflows::model::{ItemRow, Money, Name, SkuKey, StockKey};

/// One change of the views.
#[derive(Clone, Debug)]
enum Step {
    /// The sku's catalogue row: none, or `(active, price in cents)`.
    Item {
        tenant: usize,
        sku: usize,
        row: Option<(bool, i64)>,
    },
    /// The sku's on hand over its locations (`None`: no `stock_totals` row).
    OnHand {
        tenant: usize,
        sku: usize,
        on_hand: Option<i64>,
    },
    /// A location's low-stock (`out: false`) or out-of-stock alert, raised or cleared.
    Alert {
        tenant: usize,
        sku: usize,
        location: usize,
        out: bool,
        raised: bool,
    },
}

/// The views the book reads, as plain maps; alert lookups are recorded.
#[derive(Default)]
struct Views {
    items: BTreeMap<SkuKey, ItemRow>,
    totals: BTreeMap<SkuKey, i64>,
    /// `(low raised, out raised)` per stock row.
    alerts: BTreeMap<StockKey, (bool, bool)>,
    looked_up: RefCell<Vec<SkuKey>>,
}

impl SkuLookup for Views {
    fn item(&self, key: &SkuKey) -> Option<&ItemRow> {
        self.items.get(key)
    }

    fn on_hand(&self, key: &SkuKey) -> i64 {
        self.totals.get(key).copied().unwrap_or(0)
    }

    fn alerts(&self, key: &SkuKey) -> (bool, bool) {
        self.looked_up.borrow_mut().push(key.clone());
        let mut flags = (false, false);
        for (row, (low, out)) in &self.alerts {
            if row.tenant == key.tenant && row.sku == key.sku {
                flags.0 |= low;
                flags.1 |= out;
            }
        }
        flags
    }
}

fn sku_key(tenant: usize, sku: usize) -> SkuKey {
    SkuKey {
        tenant: format!("t{tenant}").into(),
        sku: format!("s{sku}").into(),
    }
}

/// The gauges from scratch: per tenant, every sku of the views summed
/// (tenants whose gauges are all zero left out); and how many skus
/// contribute something.
fn oracle(views: &Views) -> (BTreeMap<Name, Gauges>, usize) {
    let mut skus: BTreeSet<SkuKey> = views.items.keys().cloned().collect();
    skus.extend(views.totals.keys().cloned());
    skus.extend(views.alerts.keys().map(|row| SkuKey {
        tenant: row.tenant.clone(),
        sku: row.sku.clone(),
    }));
    let mut gauges: BTreeMap<Name, Gauges> = BTreeMap::new();
    let mut contributing = 0;
    for key in skus {
        let active = views.items.get(&key).filter(|item| item.active);
        let rows = views
            .alerts
            .iter()
            .filter(|(row, _)| row.tenant == key.tenant && row.sku == key.sku);
        let low = rows.clone().any(|(_, (low, _))| *low);
        let out = rows.clone().any(|(_, (_, out))| *out);
        let tenant = gauges.entry(key.tenant.clone()).or_default();
        if let Some(item) = active {
            let on_hand = views.totals.get(&key).copied().unwrap_or(0);
            tenant.skus_active += 1;
            tenant.inventory_value += on_hand as i128 * item.price.ten_thousandths() as i128;
        }
        if low {
            tenant.low_stock_skus += 1;
        }
        if out {
            tenant.out_of_stock_skus += 1;
        }
        if active.is_some() || low || out {
            contributing += 1;
        }
    }
    gauges.retain(|_, g| *g != Gauges::default());
    (gauges, contributing)
}

fn check(steps: Vec<Step>, cuts: Vec<bool>) -> Result<(), TestCaseError> {
    let mut views = Views::default();
    let mut book = GaugeBook::default();
    let mut gauges: BTreeMap<Name, Gauges> = BTreeMap::new();
    let mut batches: Vec<Vec<Step>> = vec![Vec::new()];
    for (i, step) in steps.into_iter().enumerate() {
        batches.last_mut().expect("one batch").push(step);
        if cuts.get(i).copied().unwrap_or(false) {
            batches.push(Vec::new());
        }
    }
    for (n, batch) in batches.into_iter().enumerate() {
        // As the publisher: the changed skus in arrival order, repeats kept.
        let (mut touched, mut alerted) = (Vec::new(), Vec::new());
        for step in batch {
            match step {
                Step::Item { tenant, sku, row } => {
                    let key = sku_key(tenant, sku);
                    match row {
                        Some((active, cents)) => views.items.insert(
                            key.clone(),
                            ItemRow {
                                name: "x".into(),
                                price: Money::from_cents(cents),
                                category: "".into(),
                                reorder_point: None,
                                target_level: None,
                                active,
                                updated_at: 0,
                            },
                        ),
                        None => views.items.remove(&key),
                    };
                    touched.push(key);
                }
                Step::OnHand {
                    tenant,
                    sku,
                    on_hand,
                } => {
                    let key = sku_key(tenant, sku);
                    match on_hand {
                        Some(on_hand) => views.totals.insert(key.clone(), on_hand),
                        None => views.totals.remove(&key),
                    };
                    touched.push(key);
                }
                Step::Alert {
                    tenant,
                    sku,
                    location,
                    out,
                    raised,
                } => {
                    let key = sku_key(tenant, sku);
                    let row = StockKey {
                        tenant: key.tenant.clone(),
                        sku: key.sku.clone(),
                        location: format!("w{location}").into(),
                    };
                    let flags = views.alerts.entry(row).or_default();
                    if out {
                        flags.1 = raised;
                    } else {
                        flags.0 = raised;
                    }
                    alerted.push(key);
                }
            }
        }
        let expected_lookups: BTreeSet<SkuKey> = alerted.iter().cloned().collect();
        views.looked_up.borrow_mut().clear();
        for (tenant, before, after) in book.update(&views, touched, alerted) {
            prop_assert_ne!(before, after, "batch {}: an empty move of {}", n, tenant);
            gauges.entry(tenant).or_default().replace(before, after);
        }
        let looked_up = views.looked_up.borrow().clone();
        prop_assert_eq!(
            looked_up.len(),
            expected_lookups.len(),
            "batch {}: one alert lookup per alerted sku, no other: {:?}",
            n,
            looked_up
        );
        prop_assert_eq!(
            looked_up.into_iter().collect::<BTreeSet<_>>(),
            expected_lookups
        );
        let (expected, contributing) = oracle(&views);
        let mut kept = gauges.clone();
        kept.retain(|_, g| *g != Gauges::default());
        prop_assert_eq!(&kept, &expected, "batch {}", n);
        prop_assert_eq!(
            book.contributing(),
            contributing,
            "batch {}: the book keeps the skus that contribute",
            n
        );
    }
    Ok(())
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let tenant = 0usize..2;
    let sku = 0usize..3;
    let step = prop_oneof![
        (
            tenant.clone(),
            sku.clone(),
            prop::option::weighted(0.9, (prop::bool::weighted(0.7), 0i64..500)),
        )
            .prop_map(|(tenant, sku, row)| Step::Item { tenant, sku, row }),
        (
            tenant.clone(),
            sku.clone(),
            prop::option::weighted(0.9, -3i64..30)
        )
            .prop_map(|(tenant, sku, on_hand)| Step::OnHand {
                tenant,
                sku,
                on_hand
            }),
        (
            tenant,
            sku,
            0usize..2,
            prop::bool::ANY,
            prop::bool::weighted(0.6)
        )
            .prop_map(|(tenant, sku, location, out, raised)| Step::Alert {
                tenant,
                sku,
                location,
                out,
                raised,
            }),
    ];
    prop::collection::vec(step, 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn gauges_match_a_sum_over_the_current_views(
        steps in steps(),
        cuts in prop::collection::vec(prop::bool::weighted(0.3), 60),
    ) {
        check(steps, cuts)?;
    }
}

/// A known history: a stock change keeps the sku's alert flags without
/// looking them up; a sku with nothing left drops out of the book.
#[test]
fn known_history() {
    let steps = vec![
        Step::Item {
            tenant: 0,
            sku: 0,
            row: Some((true, 250)),
        },
        Step::OnHand {
            tenant: 0,
            sku: 0,
            on_hand: Some(4),
        },
        Step::Alert {
            tenant: 0,
            sku: 0,
            location: 1,
            out: false,
            raised: true,
        },
        Step::OnHand {
            tenant: 0,
            sku: 0,
            on_hand: Some(2),
        },
        Step::Item {
            tenant: 0,
            sku: 0,
            row: Some((false, 250)),
        },
        Step::Alert {
            tenant: 0,
            sku: 0,
            location: 1,
            out: false,
            raised: false,
        },
    ];
    check(steps, vec![true; 6]).expect("the book follows the views");
}
