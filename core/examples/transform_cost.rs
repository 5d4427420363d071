//! What an endpoint transformation costs per call, for the benchmark notes (not a test):
//! `cargo run --release -p herald-core --example transform_cost`. Runs a Slack-style
//! reshaping script on a bench-sized webhook (a fresh sandbox each call, as the
//! dispatcher does) and prints the time per call and calls per second on one core.

use std::collections::BTreeMap;
use std::time::Instant;

use herald_core::transform::{run, Limits, Outcome, Webhook};
use serde_json::json;

const SCRIPT: &str = r#"function handler(webhook) {
    const d = webhook.payload.data;
    webhook.payload = { text: `${webhook.event_type}: ${JSON.stringify(d)}`, blocks: [{ type: "section", text: d.i }] };
    webhook.url = webhook.url + "/slack";
    webhook.headers["X-Team"] = "growth";
    return webhook;
}"#;

fn main() {
    let input = Webhook {
        event_type: "bench.ping".into(),
        payload: json!({"type": "bench.ping", "timestamp": "2026-12-07T12:00:00.000Z", "data": {"i": 1, "sent_ms": 1765108800000u64}}),
        url: "http://127.0.0.1:9000/hook".into(),
        headers: BTreeMap::new(),
    };
    let limits = Limits::default();
    for (name, script) in
        [("identity (return webhook)", "function handler(w) { return w; }"), ("Slack reshape", SCRIPT)]
    {
        let n = 2000;
        assert!(matches!(run(script, &input, &limits), Ok(Outcome::Send(_))));
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(run(script, &input, &limits).unwrap());
        }
        let per = t.elapsed() / n;
        println!(
            "{name}: {:.1} µs per call, {:.0} calls/s on one core",
            per.as_secs_f64() * 1e6,
            1.0 / per.as_secs_f64()
        );
    }
}
