//! Prometheus metrics. One recorder per process, rendered at `/metrics`.
//!
//! Names: `herald_bus_published_total{topic}`, `herald_bus_consumed_total{topic}`,
//! `herald_bus_dead_lettered_total{topic}`, `herald_consumer_lag{topic,partition}`,
//! `herald_attempts_total{channel,outcome}`, `herald_attempt_duration_seconds{channel}`,
//! `herald_notifications_accepted_total`, `herald_outbox_backlog`,
//! `herald_consumer_partitions_revoked_total`, `herald_consumer_assigned_partitions{topic}`, `herald_consumer_evictions_total`,
//! `herald_endpoints_disabled_total`, `herald_webhook_ssrf_refused_total`,
//! `herald_webhook_deferred_total`, `herald_lane_carried_total{topic}`,
//! `herald_lane_overflows_total{topic}`, `herald_accept_groups_total` (group commits of
//! accepted notifications: `herald_notifications_accepted_total` ÷ this is the mean group),
//! `herald_login_failures_unrecorded_total{why}`, `herald_sweeps_total`,
//! `herald_webhook_transformations_total{outcome}` (send, cancel, error) and
//! `herald_webhook_transformation_seconds`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
                .expect("static buckets")
                .install_recorder()
                .expect("one metrics recorder per process")
        })
        .clone()
}

pub fn published(topic: &str, n: u64) {
    metrics::counter!("herald_bus_published_total", "topic" => topic.to_owned()).increment(n);
}

pub fn consumed(topic: &str, n: u64) {
    metrics::counter!("herald_bus_consumed_total", "topic" => topic.to_owned()).increment(n);
}

/// Messages the fast lane carried from the API to the dispatcher of its process.
pub fn lane_carried(topic: &str, n: u64) {
    metrics::counter!("herald_lane_carried_total", "topic" => topic.to_owned()).increment(n);
}

/// Times the fast lane was full and notifications went the bus's way.
pub fn lane_overflowed(topic: &str) {
    metrics::counter!("herald_lane_overflows_total", "topic" => topic.to_owned()).increment(1);
}

pub fn dead_lettered(topic: &str) {
    metrics::counter!("herald_bus_dead_lettered_total", "topic" => topic.to_owned()).increment(1);
}

pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    metrics::gauge!("herald_consumer_lag", "topic" => topic.to_owned(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// How many partitions of a topic this process's consumer holds.
pub fn assigned_partitions(topic: &str, n: usize) {
    metrics::gauge!("herald_consumer_assigned_partitions", "topic" => topic.to_owned()).set(n as f64);
}

/// Partitions taken away from this process's consumers (rebalances, evictions).
pub fn revoked(n: u64) {
    metrics::counter!("herald_consumer_partitions_revoked_total").increment(n);
}

/// A consumer left its group because the application did not poll in time.
pub fn evicted() {
    metrics::counter!("herald_consumer_evictions_total").increment(1);
}

pub fn attempt(channel: &'static str, outcome: &'static str, seconds: f64) {
    metrics::counter!("herald_attempts_total", "channel" => channel, "outcome" => outcome).increment(1);
    metrics::histogram!("herald_attempt_duration_seconds", "channel" => channel).record(seconds);
}

pub fn accepted() {
    metrics::counter!("herald_notifications_accepted_total").increment(1);
}

/// One group commit of accepted notifications (`notifications::accept`).
pub fn accept_group() {
    metrics::counter!("herald_accept_groups_total").increment(1);
}

pub fn backlog(n: i64) {
    metrics::gauge!("herald_outbox_backlog").set(n as f64);
}

/// Herald disabled a webhook endpoint (410 Gone or failing too long).
pub fn endpoint_disabled() {
    metrics::counter!("herald_endpoints_disabled_total").increment(1);
}

/// A webhook attempt refused by the SSRF guard.
/// One run of an endpoint's transformation before an attempt.
pub fn transformation(outcome: &'static str, seconds: f64) {
    metrics::counter!("herald_webhook_transformations_total", "outcome" => outcome).increment(1);
    metrics::histogram!("herald_webhook_transformation_seconds").record(seconds);
}

pub fn ssrf_refused() {
    metrics::counter!("herald_webhook_ssrf_refused_total").increment(1);
}

/// Attempts whose outcome could not be recorded (their messages are handed back; after
/// `HERALD_BUS_MAX_REDELIVERIES` starts the delivery fails and the message is dead-lettered).
pub fn unrecorded(topic: &str, n: u64) {
    metrics::counter!("herald_attempts_unrecorded_total", "topic" => topic.to_owned()).increment(n);
}

/// Webhook attempts handed back to the bus unmade (endpoint timing out, rate limit).
pub fn webhook_deferred(n: u64) {
    metrics::counter!("herald_webhook_deferred_total").increment(n);
}

/// A supervised background task ended or panicked and was restarted.
pub fn task_restarted(task: &'static str) {
    metrics::counter!("herald_task_restarts_total", "task" => task).increment(1);
}

/// Rows removed by retention, per table.
pub fn pruned(table: &'static str, n: u64) {
    metrics::counter!("herald_retention_pruned_total", "table" => table).increment(n);
}

/// API requests refused by a key's rate limit.
/// A failed login the audit log did not record (over the failure budget, or no login
/// in progress: anonymous callbacks).
pub fn login_failure_unrecorded(why: &'static str) {
    metrics::counter!("herald_login_failures_unrecorded_total", "why" => why).increment(1);
}

/// One pass of the sweeper (tests wait on it instead of on time).
pub fn swept() {
    metrics::counter!("herald_sweeps_total").increment(1);
}

pub fn rate_limited() {
    metrics::counter!("herald_api_rate_limited_total").increment(1);
}

/// An email open or click recorded, by a person or a machine.
pub fn tracking_event(kind: &'static str, person: bool) {
    metrics::counter!("herald_tracking_events_total", "kind" => kind, "counted" => if person { "person" } else { "machine" })
        .increment(1);
}

/// A tracking hit dropped because the recording queue was full.
pub fn tracking_dropped() {
    metrics::counter!("herald_tracking_dropped_total").increment(1);
}

/// A bounce, soft bounce or complaint recorded on a delivery, by where it came from.
pub fn email_feedback(kind: &str, source: &str) {
    metrics::counter!("herald_email_feedback_total", "kind" => kind.to_owned(), "source" => source.to_owned())
        .increment(1);
}

/// An inbound report (mail or a relay's webhook) refused or dropped, and why: `forged`
/// (no valid VERP token or signature), `unparsable`, `unknown_delivery`, `not_a_report`,
/// `too_large`.
pub fn inbound_dropped(source: &str, why: &str) {
    metrics::counter!("herald_inbound_dropped_total", "source" => source.to_owned(), "reason" => why.to_owned())
        .increment(1);
}

/// An email not sent because its address is suppressed, at acceptance or at sending.
pub fn suppressed(when: &str, n: u64) {
    metrics::counter!("herald_emails_suppressed_total", "when" => when.to_owned()).increment(n);
}

/// A send through an SMTP relay: `answered` (the relay gave the recipient's answer) or
/// `failed_over` (connection failure, timeout or 4xx: the next relay was tried).
pub fn relay_attempt(relay: &str, outcome: &str) {
    metrics::counter!("herald_smtp_relay_attempts_total", "relay" => relay.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
}

/// Whether an SMTP relay is in service (1) or taken out after failing (0).
pub fn relay_up(relay: &str, up: bool) {
    metrics::gauge!("herald_smtp_relay_up", "relay" => relay.to_owned()).set(if up { 1.0 } else { 0.0 });
}
