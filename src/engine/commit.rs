//! The offset committer: hands each source the offsets the published views
//! reflect, once a second and at shutdown, for lag monitoring.

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::source::Source;
use crate::store::Store;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the published offsets are committed for lag monitoring.
const COMMIT_PERIOD: Duration = Duration::from_secs(1);

/// The committer thread: every [`COMMIT_PERIOD`], and once more at shutdown,
/// hands each source the offsets the published views reflect, if they moved
/// ([`Source::commit`]). A failure is counted and logged, then retried next
/// period: commits only serve monitoring, so they never hold anything up.
pub(super) fn commit_offsets(
    sources: Vec<Arc<dyn Source>>,
    store: &Store,
    metrics: &Metrics,
    shutdown: &Shutdown,
) {
    let mut committed: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    loop {
        let last = shutdown.is_triggered();
        if !last {
            std::thread::sleep(COMMIT_PERIOD);
        }
        let snapshot = store.snapshot();
        for source in &sources {
            let Some(reached) = snapshot.as_of.offsets.get(source.topic()) else {
                continue;
            };
            if committed.get(source.topic()) == Some(reached) {
                continue;
            }
            let offsets: Vec<(u32, u64)> = reached.iter().map(|(p, o)| (*p, *o)).collect();
            match source.commit(&offsets) {
                Ok(()) => {
                    committed.insert(source.topic().to_owned(), reached.clone());
                }
                Err(error) => {
                    metrics
                        .commit_failures
                        .with_label_values(&[source.topic()])
                        .inc();
                    tracing::debug!(%error, "offset commit failed; retrying next period");
                }
            }
        }
        if last {
            return;
        }
    }
}
