//! The `items` view: the catalogue.

use crate::model::{Event, EventBody, EventTime, ItemRow, SkuKey};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use timely::progress::Timestamp;

/// Catalogue rows per `(tenant, sku)`: the catalogue events of each sku folded
/// in event-time order (`ts`, then source position).
///
/// `item.updated` before any `item.created` changes nothing; `item.deleted`
/// keeps the row with `active = false`; a later `item.created` revives it.
pub fn items<'scope, T>(
    events: VecCollection<'scope, T, Event>,
) -> VecCollection<'scope, T, (SkuKey, ItemRow)>
where
    T: Timestamp + Lattice + Ord,
{
    events
        .flat_map(|event| match &event.body {
            EventBody::ItemCreated { sku, .. }
            | EventBody::ItemUpdated { sku, .. }
            | EventBody::ItemDeleted { sku } => {
                let key = SkuKey {
                    tenant: event.tenant.clone(),
                    sku: sku.clone(),
                };
                Some((key, (event.ts, event.seq, event.body)))
            }
            _ => None,
        })
        .reduce_named("items by sku", |_key, history, output| {
            if let Some(row) =
                fold_item(history.iter().map(|((ts, _seq, body), _diff)| (*ts, body)))
            {
                output.push((row, 1));
            }
        })
}

/// Applies catalogue events, in the order given, to an absent row.
pub fn fold_item<'a>(
    history: impl IntoIterator<Item = (EventTime, &'a EventBody)>,
) -> Option<ItemRow> {
    let mut row: Option<ItemRow> = None;
    for (ts, body) in history {
        match body {
            EventBody::ItemCreated {
                name,
                price,
                category,
                reorder_point,
                target_level,
                ..
            } => {
                row = Some(ItemRow {
                    name: name.clone(),
                    price: *price,
                    category: category.clone(),
                    reorder_point: *reorder_point,
                    target_level: *target_level,
                    active: true,
                    updated_at: ts,
                });
            }
            EventBody::ItemUpdated {
                name,
                price,
                category,
                reorder_point,
                target_level,
                ..
            } => {
                if let Some(row) = row.as_mut() {
                    if let Some(name) = name {
                        row.name = name.clone();
                    }
                    if let Some(price) = price {
                        row.price = *price;
                    }
                    if let Some(category) = category {
                        row.category = category.clone();
                    }
                    if reorder_point.is_some() {
                        row.reorder_point = *reorder_point;
                    }
                    if target_level.is_some() {
                        row.target_level = *target_level;
                    }
                    row.updated_at = ts;
                }
            }
            EventBody::ItemDeleted { .. } => {
                if let Some(row) = row.as_mut() {
                    row.active = false;
                    row.updated_at = ts;
                }
            }
            _ => {}
        }
    }
    row
}
