//! De-duplication of events by id.

use crate::model::Event;
use differential_dataflow::lattice::Lattice;
use differential_dataflow::VecCollection;
use timely::progress::Timestamp;

/// Events with one row per `(tenant, id)`: of several events sharing an id,
/// the earliest in the log (least source position) stands for all.
///
/// A producer that retries (at-least-once delivery) therefore changes no view.
/// The choice does not depend on arrival order or epoch split.
pub fn dedup<'scope, T>(events: VecCollection<'scope, T, Event>) -> VecCollection<'scope, T, Event>
where
    T: Timestamp + Lattice + Ord,
{
    events
        .map(|event| ((event.tenant.clone(), event.id.clone()), event))
        .reduce_named("events by id", |_id, copies, output| output.push((copies[0].0.clone(), 1)))
        .map(|(_id, event)| event)
}
