//! Prometheus metrics of the engine and the API, served at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric stockflow exports; one `Arc` to clone (every request clones
/// the HTTP state: cloning ~60 handles one by one cost 13% of a command's CPU).
#[derive(Clone)]
pub struct Metrics(std::sync::Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;

    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

/// The metrics themselves (reached through [`Metrics`]).
pub struct MetricSet {
    registry: Registry,
    /// Events decoded and fed to the dataflows, by topic.
    pub events_in: IntCounterVec,
    /// Messages that failed to decode or validate, by topic and reason class.
    pub decode_errors: IntCounterVec,
    /// Messages written to a dead-letter topic, by source topic and reason class.
    pub dead_letters: IntCounterVec,
    /// Records to a topic whose delivery failed and that were sent again
    /// (outcomes, alert events, dead letters), by the topic written.
    pub append_failures: IntCounterVec,
    /// Messages read by the workers and not yet in a published epoch.
    pub events_in_flight: IntGauge,
    /// Seconds from closing an epoch to publishing the views that reflect it.
    pub epoch_latency: Histogram,
    /// Last published epoch.
    pub published_epoch: IntGauge,
    /// Rows per view in the published state.
    pub view_rows: IntGaugeVec,
    /// Next offset to read, by topic and partition.
    pub source_position: IntGaugeVec,
    /// Offset after the last message in the partition, by topic and partition.
    pub source_end: IntGaugeVec,
    /// Messages not yet read (end minus position), by topic and partition.
    pub source_lag: IntGaugeVec,
    /// Source read errors, by topic.
    pub source_errors: IntCounterVec,
    /// Command outcomes appended to the event topic.
    pub outcomes: IntCounter,
    /// Commands accepted over HTTP, per command type.
    pub commands_in: IntCounterVec,
    /// Offset commits (monitoring only) that failed, per topic.
    pub commit_failures: IntCounterVec,
    /// HTTP requests by route, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request latency by route and status.
    pub http_latency: HistogramVec,
    /// HTTP connections open now (at most `--max-connections`).
    pub http_connections: IntGauge,
    /// Times the listener found every connection slot taken and waited.
    pub http_connection_cap_reached: IntCounter,
    /// Events appended by the demo generator.
    pub demo_events: IntCounterVec,
    /// Alert transitions by kind and state (`raised`, `cleared`).
    pub alert_transitions: IntCounterVec,
    /// Alerts active now, by kind.
    pub alerts_active: IntGaugeVec,
    /// Alert events appended to the alerts topic.
    pub alerts_written: IntCounter,
    /// Open change streams by view.
    pub streams_open: IntGaugeVec,
    /// Rows sent on change streams by view.
    pub stream_rows: IntCounterVec,
    /// Change streams ended by the server, by reason (`behind`).
    pub streams_dropped: IntCounterVec,
    /// Row changes retained for change streams.
    pub changes_retained: IntGauge,
    /// Webhook delivery attempts by outcome (`delivered`, `retry`, `failed`, `refused`).
    pub webhook_attempts: IntCounterVec,
    /// Times a webhook fell behind the shared reader of the alerts topic (its
    /// queue full) and went on reading from its own cursor, per webhook.
    pub webhook_behind: IntCounterVec,
    /// Alert events waiting for delivery, per webhook.
    pub webhook_lag: IntGaugeVec,
    /// KPI updates for buckets already past `--kpi-retention`, ignored.
    pub kpi_too_late: IntCounter,
    /// Rows the ClickHouse sink has committed, by table.
    pub sink_rows: IntCounterVec,
    /// ClickHouse writes that failed (retried after discarding what they left).
    pub sink_failures: IntCounter,
    /// Published epochs the ClickHouse sink has not written yet.
    pub sink_lag_epochs: IntGauge,
    /// Rows the ClickHouse sink holds, computed but not committed.
    pub sink_buffered_rows: IntGauge,
    /// 1 while the sink has stopped pulling epochs (buffer full).
    pub sink_paused: IntGauge,
    /// Last sink epoch committed to ClickHouse.
    pub sink_epoch: IntGauge,
    /// Time the sink spends per phase: `step` (read, decode, diff) and `write` (a batch to ClickHouse).
    pub sink_seconds: HistogramVec,
    /// Checkpoints written.
    pub checkpoints: IntCounter,
    /// Checkpoints that failed (retried at the next interval).
    pub checkpoint_failures: IntCounter,
    /// Time to write a checkpoint (read the new events back, encode, write, sync).
    pub checkpoint_seconds: Histogram,
    /// Bytes of the last checkpoint (every file it names).
    pub checkpoint_bytes: IntGauge,
    /// Events the last checkpoint holds.
    pub checkpoint_events: IntGauge,
    /// When the last checkpoint was written (Unix seconds; age = now - this).
    pub checkpoint_time: IntGauge,
    /// Events restored from a checkpoint at start.
    pub restored_events: IntGauge,
    /// Messages a resumed checkpoint needed that the sources no longer held (`--on-checkpoint-gap accept`).
    pub checkpoint_gap: IntGauge,
    /// Seconds since the last checkpoint was written (set at each render).
    pub checkpoint_age: IntGauge,
    /// Messages stockflow appended, by topic (commands, outcomes, alert events, dead letters).
    pub events_out: IntCounterVec,
    /// `/v1` requests refused by auth, by reason (missing, malformed, unknown, rate_limited, right, tenant).
    pub auth_denied: IntCounterVec,
    /// Requests answered 503 because their handler ran past `--request-timeout`, by route.
    pub http_timeouts: IntCounterVec,
    /// What the de-duplication window holds, counted by the dataflow.
    pub dedup: std::sync::Arc<stockflow_dataflows::dedup::DedupStats>,
    /// Event ids the de-duplication window remembers (set at each render).
    pub dedup_ids: IntGauge,
    /// Event ids forgotten by the window since start (set at each render).
    pub dedup_forgotten: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let int_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let published_epoch = IntGauge::new(
            "stockflow_published_epoch",
            "Last epoch published to readers.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(published_epoch.clone()))
            .expect("unique metric");
        Metrics(std::sync::Arc::new(MetricSet {
            events_in: counter("stockflow_events_in_total", "Events decoded and fed to the dataflows.", &["topic"]),
            decode_errors: counter("stockflow_decode_errors_total", "Messages that failed to decode or validate, skipped.", &["topic", "reason"]),
            dead_letters: counter("stockflow_dead_letters_total", "Messages written to their dead-letter topic.", &["topic", "reason"]),
            append_failures: counter(
                "stockflow_append_failures_total",
                "Records whose delivery failed and that were sent again, by topic written.",
                &["topic"],
            ),
            events_in_flight: {
                let g = IntGauge::new("stockflow_events_in_flight", "Messages read and not yet in a published epoch (bounded by --max-in-flight-events).")
                    .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            epoch_latency: {
                let h = Histogram::with_opts(
                    HistogramOpts::new("stockflow_epoch_latency_seconds", "From closing an epoch to publishing views that reflect it.")
                        .buckets(latency_buckets.clone()),
                )
                .expect("valid metric");
                registry.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            published_epoch,
            view_rows: gauge("stockflow_view_rows", "Rows in each published view.", &["view"]),
            source_position: gauge("stockflow_source_position", "Next offset to read.", &["topic", "partition"]),
            source_end: gauge("stockflow_source_end_offset", "Offset after the last message in the partition.", &["topic", "partition"]),
            source_lag: gauge("stockflow_source_lag", "Messages in the partition not yet read.", &["topic", "partition"]),
            source_errors: counter("stockflow_source_errors_total", "Errors reading a source.", &["topic"]),
            outcomes: int_counter("stockflow_command_outcomes_total", "Command outcomes (events and rejections) appended to the event topic."),
            commands_in: counter("stockflow_commands_total", "Commands accepted over HTTP and appended.", &["type"]),
            commit_failures: counter(
                "stockflow_offset_commit_failures_total",
                "Offset commits for lag monitoring that failed (retried next period).",
                &["topic"],
            ),
            http_requests: counter("stockflow_http_requests_total", "HTTP requests.", &["route", "method", "status"]),
            http_latency: histogram("stockflow_http_request_duration_seconds", "HTTP request latency.", &["route", "status"], latency_buckets),
            http_connections: int_gauge("stockflow_http_connections", "HTTP connections open (at most --max-connections)."),
            http_connection_cap_reached: int_counter(
                "stockflow_http_connection_cap_reached_total",
                "Times every HTTP connection slot was taken and new connections waited in the listen backlog.",
            ),
            demo_events: counter("stockflow_demo_events_total", "Events appended by the demo generator.", &["tenant"]),
            alert_transitions: counter("stockflow_alert_transitions_total", "Alert transitions computed.", &["kind", "state"]),
            alerts_active: gauge("stockflow_alerts_active", "Alerts active now.", &["kind"]),
            alerts_written: int_counter("stockflow_alert_events_written_total", "Alert events appended to the alerts topic."),
            streams_open: gauge("stockflow_change_streams_open", "Open change streams.", &["view"]),
            stream_rows: counter("stockflow_change_stream_rows_total", "Rows sent on change streams (snapshots and changes).", &["view"]),
            streams_dropped: counter("stockflow_change_streams_dropped_total", "Change streams ended by the server.", &["reason"]),
            changes_retained: {
                let g = IntGauge::new("stockflow_changes_retained_rows", "Row changes retained for change streams to resume from.").expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            webhook_attempts: counter("stockflow_webhook_attempts_total", "Webhook delivery attempts by outcome.", &["webhook", "outcome"]),
            webhook_behind: counter(
                "stockflow_webhook_behind_total",
                "Times a webhook fell behind the shared alerts reader and read from its own cursor.",
                &["webhook"],
            ),
            webhook_lag: gauge("stockflow_webhook_lag", "Alert events not yet delivered (or given up on) per webhook.", &["webhook"]),
            kpi_too_late: int_counter("stockflow_kpi_updates_too_late_total", "KPI updates ignored because their bucket was already past --kpi-retention."),
            sink_rows: counter("stockflow_sink_rows_total", "Rows the ClickHouse sink committed, by table.", &["table"]),
            sink_failures: int_counter("stockflow_sink_write_failures_total", "ClickHouse writes that failed and were retried."),
            sink_lag_epochs: int_gauge("stockflow_sink_lag_epochs", "Published epochs the ClickHouse sink has not written yet."),
            sink_buffered_rows: int_gauge("stockflow_sink_buffered_rows", "Rows computed by the ClickHouse sink and not committed yet."),
            sink_paused: int_gauge("stockflow_sink_paused", "1 while the ClickHouse sink's buffer is full and it stopped pulling epochs."),
            sink_epoch: int_gauge("stockflow_sink_epoch", "Last sink epoch committed to ClickHouse."),
            sink_seconds: histogram(
                "stockflow_sink_seconds",
                "Time the ClickHouse sink spends per phase: step (read, decode, diff) and write (one batch).",
                &["phase"],
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            checkpoints: int_counter("stockflow_checkpoints_total", "Checkpoints written."),
            checkpoint_failures: int_counter("stockflow_checkpoint_failures_total", "Checkpoints that failed (retried at the next interval)."),
            checkpoint_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new("stockflow_checkpoint_seconds", "Time to write a checkpoint (read new events back, encode, write, fsync).")
                        .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                )
                .expect("valid metric");
                registry.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            checkpoint_bytes: int_gauge("stockflow_checkpoint_bytes", "Bytes of the last checkpoint (every file it names)."),
            checkpoint_events: int_gauge("stockflow_checkpoint_events", "Events the last checkpoint holds."),
            checkpoint_time: int_gauge("stockflow_checkpoint_timestamp_seconds", "When the last checkpoint was written (Unix seconds)."),
            restored_events: int_gauge("stockflow_checkpoint_restored_events", "Events restored from a checkpoint at start."),
            checkpoint_gap: int_gauge(
                "stockflow_checkpoint_gap_messages",
                "Messages the resumed checkpoint needed that the sources no longer held (skipped under --on-checkpoint-gap accept).",
            ),
            checkpoint_age: int_gauge("stockflow_checkpoint_age_seconds", "Seconds since the last checkpoint was written (-1: none yet)."),
            events_out: counter(
                "stockflow_events_out_total",
                "Messages appended, by topic: commands, command outcomes, alert events, dead letters.",
                &["topic"],
            ),
            auth_denied: counter("stockflow_http_auth_denied_total", "/v1 requests refused by auth, by reason.", &["reason"]),
            http_timeouts: counter("stockflow_http_timeouts_total", "Requests whose handler ran past --request-timeout, by route.", &["route"]),
            dedup: Default::default(),
            dedup_ids: {
                let g = IntGauge::new("stockflow_dedup_ids", "Event ids remembered for de-duplication (bounded by --dedup-window-ids).")
                    .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            dedup_forgotten: {
                let g = IntGauge::new("stockflow_dedup_forgotten_total", "Event ids the de-duplication window forgot (by count or age) since start: a copy of one would count again.")
                    .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            registry,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let written = self.checkpoint_time.get();
        self.checkpoint_age.set(if written > 0 {
            (chrono::Utc::now().timestamp() - written).max(0)
        } else {
            -1
        });
        use std::sync::atomic::Ordering::Relaxed;
        self.dedup_ids.set(self.dedup.remembered.load(Relaxed));
        self.dedup_forgotten
            .set(self.dedup.forgotten.load(Relaxed) as i64);
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}
