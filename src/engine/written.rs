//! The alerts topic read at start: the highest transition it already holds
//! per stock row and kind, so that a restart or replay writes none twice.

use super::READ_CHUNK;
use crate::rows::AlertEvent;
use crate::shutdown::Shutdown;
use crate::source::Source;
use crate::store::Store;
use anyhow::Context;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use stockflow_dataflows::model::{Name, StockKey};

/// [`written_alerts`], retried with backoff while the topic cannot be read
/// (a topic just created may not be readable at once), saying so in `/ready`.
pub(super) fn read_written_alerts(
    source: &dyn Source,
    store: &Store,
    shutdown: &Shutdown,
) -> anyhow::Result<HashMap<StockKey, [u64; 2]>> {
    let mut failures = 0u32;
    loop {
        match written_alerts(source) {
            Ok(written) => {
                store.status.set_waiting(None);
                return Ok(written);
            }
            Err(error) if failures < 30 && !shutdown.is_triggered() => {
                failures += 1;
                let reason = format!("reading the alerts topic {}: {error:#}", source.topic());
                let backoff = stockflow_sinks::backoff::ALERTS_READ_BACK.delay(failures);
                tracing::warn!(retry_in_ms = backoff.as_millis() as u64, "{reason}");
                store.status.set_waiting(Some(reason));
                std::thread::sleep(backoff);
            }
            Err(error) => return Err(error),
        }
    }
}

/// How long the alerts topic must return nothing past its reported end
/// before it counts as read (Tansu under-reports high watermarks).
const QUIET: Duration = Duration::from_millis(200);

/// Reads the alerts topic to its end: the highest transition it holds per
/// `(stock row, kind)`. Messages that are not alert events are skipped.
///
/// The end is where reads stop returning messages after the reported end
/// offset (Tansu under-reports high watermarks), for at most a minute.
fn written_alerts(source: &dyn Source) -> anyhow::Result<HashMap<StockKey, [u64; 2]>> {
    let mut written = HashMap::new();
    let mut readers = Vec::new();
    let wake = crate::source::wake_this_thread();
    let mut readers_wake = true;
    for partition in 0..source.partitions() {
        let end = source
            .end_offset(partition)
            .with_context(|| format!("reading the end of {}/{partition}", source.topic()))?;
        let mut reader = source.reader(partition, 0)?;
        readers_wake &= reader.wake_on_data(wake.clone());
        readers.push((reader, end));
    }
    let started = Instant::now();
    let mut last_read = Instant::now();
    let mut last_error: Option<String> = None;
    let mut records = Vec::new();
    loop {
        let mut read = 0;
        for (reader, _) in readers.iter_mut() {
            records.clear();
            // librdkafka reports connection trouble as read errors and recovers by
            // itself: poll again until the deadline below.
            match reader.read(READ_CHUNK, &mut records) {
                Ok(n) => read += n,
                Err(error) => {
                    tracing::debug!(%error, topic = source.topic(), partition = reader.partition(), "reading the alerts topic; retrying");
                    last_error = Some(error.to_string());
                }
            }
            for record in &records {
                let Ok(event) = serde_json::from_slice::<AlertEvent>(&record.payload) else {
                    continue;
                };
                let slot: &mut [u64; 2] = written
                    .entry(StockKey {
                        tenant: Name::from(event.tenant.as_ref()),
                        sku: Name::from(event.sku.as_ref()),
                        location: Name::from(event.location.as_ref()),
                    })
                    .or_default();
                slot[event.kind as usize] = slot[event.kind as usize].max(event.transition);
            }
        }
        let now = Instant::now();
        if read > 0 {
            last_read = now;
            continue;
        }
        let at_end = readers
            .iter()
            .all(|(reader, end)| reader.position() >= *end);
        let quiet = now.duration_since(last_read);
        if at_end && quiet > QUIET {
            break;
        }
        anyhow::ensure!(
            now.duration_since(started) < Duration::from_secs(60),
            "reading the alerts topic {} to its end took over a minute (last error: {})",
            source.topic(),
            last_error.as_deref().unwrap_or("none")
        );
        if readers_wake {
            // Until records come, the topic has been quiet long enough, or the minute is up.
            let minute = Duration::from_secs(60).saturating_sub(now.duration_since(started));
            let wait = if at_end {
                QUIET.saturating_sub(quiet)
            } else {
                Duration::from_secs(1)
            };
            std::thread::park_timeout(wait.min(minute) + Duration::from_millis(1));
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    tracing::info!(
        topic = source.topic(),
        alerts = written.len(),
        "alerts already written"
    );
    Ok(written)
}
