//! The shared vocabulary: domain events that enter the dataflows, the keys and
//! rows that leave them, and the decoding of wire messages into events.
//!
//! Everything here is plain data: no I/O, no clocks. Sources decode bytes with
//! [`decode_event`]; the dataflows take [`Event`]s; the serving layer and the
//! sinks read [`ItemRow`]s and [`StockDelta`]s.

pub mod command;
pub mod cqrs;
pub mod decode;
mod encode;
mod money;
pub mod tradex;

pub use command::{decode_command, Command};
pub use decode::{decode_event, DecodeError, RecordContext};
pub use encode::encode_event;
pub use money::{Money, MoneyError};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// A short identifier (tenant, sku, location, ids). Stored inline up to 24 bytes,
/// so cloning a key in the dataflow does not allocate.
pub type Name = CompactString;

/// Event time in milliseconds since the Unix epoch, UTC.
pub type EventTime = i64;

/// The logical time of the dataflows: the epoch number. Each epoch covers a
/// contiguous range of offsets on every source partition.
pub type Epoch = u64;

/// Tenant used when a message or a request names none.
pub const DEFAULT_TENANT: &str = "default";

/// One decoded, validated domain event.
///
/// Field order matters: the derived `Ord` sorts copies of one id by source
/// position, so "the first delivery wins" is the same decision on every worker
/// and in every epoch split. Copies of one id share a key and so a partition,
/// where position order is arrival order: a chosen copy is never superseded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Tenant (company) the event belongs to.
    pub tenant: Name,
    /// Unique event id: two events with the same tenant and id are one event.
    pub id: Name,
    /// Position in the source (offset within its partition). Of several copies
    /// of one id the earliest position wins; it also breaks ties of `ts`.
    pub seq: u64,
    /// Event time.
    pub ts: EventTime,
    /// What happened.
    pub body: EventBody,
}

/// The payload of an [`Event`], one variant per event type (docs/formats.md).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventBody {
    /// `item.created`: a catalogue item appears, optionally with initial stock.
    ItemCreated {
        /// Stock keeping unit.
        sku: Name,
        /// Display name.
        name: String,
        /// Unit price.
        price: Money,
        /// Category ("" when not given).
        category: Name,
        /// Per-item low-stock threshold.
        reorder_point: Option<i64>,
        /// Level a replenishment brings the stock back to (default 2 × threshold).
        target_level: Option<i64>,
        /// Initial on-hand quantity per location (each >= 0).
        initial: Vec<(Name, i64)>,
    },
    /// `item.updated`: some catalogue fields change; absent fields keep their value.
    ItemUpdated {
        /// Stock keeping unit.
        sku: Name,
        /// New name.
        name: Option<String>,
        /// New price.
        price: Option<Money>,
        /// New category.
        category: Option<Name>,
        /// New reorder point.
        reorder_point: Option<i64>,
        /// New target level.
        target_level: Option<i64>,
    },
    /// `item.deleted`: the item is no longer active.
    ItemDeleted {
        /// Stock keeping unit.
        sku: Name,
    },
    /// `stock.adjusted`: on-hand quantity changes by a signed, non-zero amount.
    StockAdjusted {
        /// Stock keeping unit.
        sku: Name,
        /// Store or warehouse.
        location: Name,
        /// Signed change of on-hand quantity.
        qty: i64,
        /// Why (sale, restock, count, damage, ...).
        reason: Name,
    },
    /// `stock.reserved`: quantity set aside for a reservation.
    StockReserved {
        /// Stock keeping unit.
        sku: Name,
        /// Store or warehouse.
        location: Name,
        /// Reserved quantity (> 0).
        qty: i64,
        /// Reservation id, referenced by release and commit.
        reservation_id: Name,
        /// Order the reservation belongs to, if any.
        order_id: Option<Name>,
    },
    /// `stock.released`: a reservation is given back to available stock.
    StockReleased {
        /// The reservation released.
        reservation_id: Name,
    },
    /// `stock.committed`: reserved stock leaves the shelf.
    StockCommitted {
        /// The reservation committed.
        reservation_id: Name,
    },
    /// The absolute stock of a sku at a location after a change, with the
    /// version of that state (the `inventory-cqrs` format). The newest version
    /// stands for the key; levels of older versions change nothing.
    StockLevel {
        /// Stock keeping unit.
        sku: Name,
        /// Store or warehouse.
        location: Name,
        /// Physical quantity on the shelf (>= 0).
        on_hand: i64,
        /// Quantity set aside (0..=on_hand).
        reserved: i64,
        /// Version of the state; higher is newer.
        version: u64,
    },
    /// `reservation.rejected`: the decider refused a command.
    ReservationRejected {
        /// The command refused.
        command_id: Name,
        /// Why.
        reason: String,
        /// The sku concerned, when known.
        sku: Option<Name>,
    },
    /// `order.placed`: an order with its lines.
    OrderPlaced {
        /// Order id.
        order_id: Name,
        /// Customer id.
        customer_id: Name,
        /// Ordered lines.
        lines: Vec<OrderLine>,
        /// Order total.
        total: Money,
    },
    /// `order.confirmed`, `order.cancelled` or `order.shipped`.
    OrderStatus {
        /// Order id.
        order_id: Name,
        /// The new status.
        status: OrderStatus,
        /// Reason (cancellations).
        reason: Option<String>,
    },
    // Last: bincode numbers variants in order, and checkpoints of format 1
    // hold the others.
    /// The folded history of one stock key, as a compacted checkpoint holds
    /// it ([`crate::compact`]): the sum of its folded changes. Internal:
    /// never read from or written to a topic; its id is empty.
    StockState {
        /// Stock keeping unit.
        sku: Name,
        /// Store or warehouse.
        location: Name,
        /// Change of on-hand quantity.
        on_hand: i64,
        /// Change of reserved quantity.
        reserved: i64,
        /// Changes folded (what reads show as `version`).
        changes: u64,
    },
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderLine {
    /// Stock keeping unit.
    pub sku: Name,
    /// Location the line ships from.
    pub location: Name,
    /// Quantity (> 0).
    pub qty: i64,
    /// Unit price.
    pub price: Money,
}

/// Lifecycle state of an order after it was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    /// All lines reserved.
    Confirmed,
    /// Rejected or cancelled.
    Cancelled,
    /// Left the warehouse.
    Shipped,
}

impl EventBody {
    /// The wire name of the event type (`"stock.adjusted"`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::ItemCreated { .. } => "item.created",
            EventBody::ItemUpdated { .. } => "item.updated",
            EventBody::ItemDeleted { .. } => "item.deleted",
            EventBody::StockAdjusted { .. } => "stock.adjusted",
            EventBody::StockReserved { .. } => "stock.reserved",
            EventBody::StockReleased { .. } => "stock.released",
            EventBody::StockCommitted { .. } => "stock.committed",
            EventBody::StockLevel { .. } => "stock.level",
            EventBody::StockState { .. } => "stock.state",
            EventBody::ReservationRejected { .. } => "reservation.rejected",
            EventBody::OrderPlaced { .. } => "order.placed",
            EventBody::OrderStatus { status, .. } => match status {
                OrderStatus::Confirmed => "order.confirmed",
                OrderStatus::Cancelled => "order.cancelled",
                OrderStatus::Shipped => "order.shipped",
            },
        }
    }

    /// The sku the event concerns, when it names one directly.
    pub fn sku(&self) -> Option<&Name> {
        match self {
            EventBody::ItemCreated { sku, .. }
            | EventBody::ItemUpdated { sku, .. }
            | EventBody::ItemDeleted { sku }
            | EventBody::StockAdjusted { sku, .. }
            | EventBody::StockReserved { sku, .. }
            | EventBody::StockLevel { sku, .. }
            | EventBody::StockState { sku, .. } => Some(sku),
            EventBody::ReservationRejected { sku, .. } => sku.as_ref(),
            _ => None,
        }
    }
}

/// Key of the `items` and `stock_totals` views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SkuKey {
    /// Tenant.
    pub tenant: Name,
    /// Stock keeping unit.
    pub sku: Name,
}

/// Key of the `stock` view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StockKey {
    /// Tenant.
    pub tenant: Name,
    /// Stock keeping unit.
    pub sku: Name,
    /// Store or warehouse.
    pub location: Name,
}

/// A row of the `items` view.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemRow {
    /// Display name.
    pub name: String,
    /// Unit price.
    pub price: Money,
    /// Category.
    pub category: Name,
    /// Per-item low-stock threshold, if set.
    pub reorder_point: Option<i64>,
    /// Level a replenishment brings the stock back to, if set (else 2 × threshold).
    pub target_level: Option<i64>,
    /// False once the item was deleted (and not re-created).
    pub active: bool,
    /// Event time of the last catalogue event applied.
    pub updated_at: EventTime,
}

/// The difference type of the `stock` and `stock_totals` views: the change of
/// quantities carried by an update, so that summing updates *is* the view.
///
/// `updated_at` accumulates by `max`: the event time of the newest event that
/// touched the row. Because of it, a delta is never zero: once any event has
/// touched a key, the key has a row (possibly with zero quantities), and that
/// row is the same whatever the epoch split. `max` cannot be undone: if a
/// retraction ever reaches a key (an event superseded by an earlier-positioned
/// copy arriving later, possible only across partitions) the quantities are
/// exact and `updated_at` keeps the superseded event's time.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct StockDelta {
    /// Change of physical quantity on the shelf.
    pub on_hand: i64,
    /// Change of quantity set aside by open reservations.
    pub reserved: i64,
    /// Stock changes counted: 1 per adjustment, reservation, release or
    /// commit, per location of an item's initial stock, and per location of
    /// an absolute level (its later versions replace it: they count 0). Summed
    /// over a sku's locations it is the sku's `version`, what a command's
    /// `expected_version` is compared with.
    pub changes: i64,
    /// Newest event time contributing to this delta.
    pub updated_at: EventTime,
}

impl StockDelta {
    /// Quantity that can still be promised: on hand minus reserved.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

impl differential_dataflow::difference::IsZero for StockDelta {
    fn is_zero(&self) -> bool {
        // Never zero: see the type's documentation. A touched key keeps its row.
        false
    }
}

impl differential_dataflow::difference::Semigroup for StockDelta {
    fn plus_equals(&mut self, rhs: &Self) {
        self.on_hand += rhs.on_hand;
        self.reserved += rhs.reserved;
        self.changes += rhs.changes;
        self.updated_at = self.updated_at.max(rhs.updated_at);
    }
}

impl differential_dataflow::difference::Multiply<isize> for StockDelta {
    type Output = StockDelta;
    fn multiply(self, rhs: &isize) -> StockDelta {
        let factor = *rhs as i64;
        StockDelta {
            on_hand: self.on_hand * factor,
            reserved: self.reserved * factor,
            changes: self.changes * factor,
            updated_at: self.updated_at,
        }
    }
}

/// A fast, deterministic 64-bit hash of string parts, the same on every run,
/// worker and platform (unlike `std`'s `DefaultHasher`, whose algorithm may
/// change between Rust releases). Equal parts hash equal; `seed` gives
/// independent hashes of the same parts.
pub fn hash_parts(seed: u64, parts: &[&str]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = seed ^ (parts.len() as u64).wrapping_mul(K);
    for part in parts {
        let bytes = part.as_bytes();
        let mut chunks = bytes.chunks_exact(8);
        for chunk in chunks.by_ref() {
            h = (h ^ u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
                .wrapping_mul(K)
                .rotate_left(29);
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        h = (h ^ u64::from_le_bytes(tail) ^ ((bytes.len() as u64) << 56))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    // murmur3's finaliser spreads every input bit over the low bits used for exchange.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
