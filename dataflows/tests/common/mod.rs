//! What the dataflow property tests share.

pub mod history;

use differential_dataflow::input::InputSession;
use timely::dataflow::operators::probe::Handle;
use timely::worker::Worker;

/// The dataflows' logical time in the tests: epoch numbers.
pub type Epoch = u64;

/// Feeds `epochs` to `input`, epoch `e` at time `e` (record `i` of an epoch
/// by worker `i % peers`, so every worker feeds some), stepping `worker`
/// after each epoch until `probe` has passed it.
pub fn feed<D: differential_dataflow::Data>(
    worker: &mut Worker,
    input: &mut InputSession<Epoch, D, isize>,
    probe: &Handle<Epoch>,
    epochs: &[Vec<D>],
) {
    let (index, peers) = (worker.index(), worker.peers());
    for (epoch, records) in epochs.iter().enumerate() {
        for (i, record) in records.iter().enumerate() {
            if i % peers == index {
                input.insert(record.clone());
            }
        }
        input.advance_to(epoch as Epoch + 1);
        input.flush();
        while probe.less_than(input.time()) {
            worker.step();
        }
    }
}
