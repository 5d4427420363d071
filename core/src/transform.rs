//! Webhook transformations: an endpoint's JavaScript function `handler(webhook)`, run
//! in an embedded QuickJS (through `rquickjs`) before each attempt.
//!
//! The function receives `{event_type, payload, url, headers}` and returns the object
//! changed (any of `payload`, `url`, `headers`; a field left out keeps its value) or
//! with `cancel: true`, which cancels the delivery. Every call gets a fresh context (its
//! own realm: globals, built-ins, objects) on its thread's runtime, which is reused
//! only after a clean call: no state survives between calls, and no owner's script sees
//! another's data.
//!
//! Limits, all hard: CPU time (an interrupt handler stops the interpreter past the
//! deadline), memory (QuickJS's allocator limit), stack depth, the size of the script
//! and of what it returns. The context has the language and `JSON`, `RegExp`, `Map`/`Set`
//! and typed arrays, and nothing else: no `Date` or `performance` (no clock beyond the
//! event's), no `eval` of new code after the script, no module loader, no I/O of any
//! kind (QuickJS has none without its `std`/`os` modules, which are not linked).
//! A script that throws, runs too long or uses too much memory fails with a
//! [`Failure`] naming why; callers run it on a blocking thread ([`run_blocking`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use rquickjs::context::intrinsic;
use rquickjs::{CatchResultExt, CaughtError, Context, Ctx, Function, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

/// The largest script an endpoint may carry.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;

/// What a call may use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time of the call, on a thread of its own (so, CPU time).
    pub time: Duration,
    /// QuickJS heap.
    pub memory: usize,
    /// The interpreter's stack.
    pub stack: usize,
    /// The JSON the function returns.
    pub output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { time: Duration::from_millis(50), memory: 16 << 20, stack: 256 << 10, output: 1 << 20 }
    }
}

/// What the function receives, and (changed) returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Webhook {
    pub event_type: String,
    pub payload: Value,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// What a transformation decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Send(Webhook),
    /// `cancel: true`: the delivery is not sent.
    Cancel,
}

/// Why a transformation failed (shown on the attempt and to the owner testing it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the function returns. Unknown fields are refused, so a typo is an error rather
/// than a silent no-op.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Returned {
    #[serde(default)]
    event_type: Option<Value>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cancel: Option<bool>,
}

/// Checks a script before it is saved: its size, that it compiles and that it defines
/// `handler` as a function (running its top level under the same limits).
pub fn check(script: &str, limits: &Limits) -> Result<(), Failure> {
    with_handler(script, limits, |_, _| Ok(()))
}

/// Runs `script`'s `handler` on `input`.
pub fn run(script: &str, input: &Webhook, limits: &Limits) -> Result<Outcome, Failure> {
    let json = serde_json::to_string(input).map_err(|e| Failure(format!("the event could not be passed: {e}")))?;
    let out = with_handler(script, limits, |ctx, handler| {
        let arg = ctx.json_parse(json.as_str()).catch(&ctx).map_err(|e| caught(e, "reading the event"))?;
        let ret: rquickjs::Value = handler.call((arg,)).catch(&ctx).map_err(|e| caught(e, "handler"))?;
        if ret.is_promise() {
            return Err(Failure("handler must return the webhook object, not a promise (it cannot be async)".into()));
        }
        if !ret.is_object() || ret.is_array() || ret.is_function() {
            return Err(Failure("handler must return the webhook object (or one with cancel: true)".into()));
        }
        let text = ctx.json_stringify(ret).catch(&ctx).map_err(|e| caught(e, "the returned value"))?;
        let text = text.map(|s| s.to_string()).transpose().map_err(|e| Failure(format!("the returned value: {e}")))?;
        text.ok_or_else(|| Failure("handler returned nothing".into()))
    })?;
    if out.len() > limits.output {
        return Err(Failure(format!("the returned webhook is larger than {} KiB", limits.output >> 10)));
    }
    let r: Returned = serde_json::from_str(&out).map_err(|e| Failure(format!("the returned webhook: {e}")))?;
    if r.cancel == Some(true) {
        return Ok(Outcome::Cancel);
    }
    if let Some(et) = r.event_type {
        if et != Value::String(input.event_type.clone()) {
            return Err(Failure("event_type cannot be changed".into()));
        }
    }
    Ok(Outcome::Send(Webhook {
        event_type: input.event_type.clone(),
        payload: r.payload.unwrap_or_else(|| input.payload.clone()),
        url: r.url.unwrap_or_else(|| input.url.clone()),
        headers: r.headers.unwrap_or_else(|| input.headers.clone()),
    }))
}

/// Calls running at once in this process: one core fewer than the machine has (at least
/// one), so scripts can never take every core from the API and the plain deliveries.
static RUNNING: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Semaphore::new(cores.saturating_sub(1).max(1))
});

/// [`run`] on the blocking pool, at most one call per spare core at a time; a panic in
/// the engine becomes a failure of this call.
pub async fn run_blocking(script: Arc<str>, input: Webhook, limits: Limits) -> Result<Outcome, Failure> {
    blocking(move || run(&script, &input, &limits)).await
}

/// [`check`] the same way (a script saved with an endpoint runs its top level too).
pub async fn check_blocking(script: Arc<str>, limits: Limits) -> Result<(), Failure> {
    blocking(move || check(&script, &limits)).await
}

/// Runs `f` on the blocking pool under [`RUNNING`].
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Failure> + Send + 'static) -> Result<T, Failure> {
    let Ok(_turn) = RUNNING.acquire().await else {
        return Err(Failure("the transformation sandbox is shut down".into()));
    };
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(Failure("the transformation stopped unexpectedly".into())))
}

/// Evaluates the script in a fresh, limited runtime and hands its `handler` to `f`.
fn with_handler<T>(
    script: &str,
    limits: &Limits,
    f: impl for<'js> FnOnce(Ctx<'js>, Function<'js>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    if script.len() > MAX_SCRIPT_BYTES {
        return Err(Failure(format!("the script is larger than {} KiB", MAX_SCRIPT_BYTES >> 10)));
    }
    if script.contains('\0') {
        return Err(Failure("the script contains a NUL character".into()));
    }
    let sandbox = match SANDBOX.with(|s| s.borrow_mut().take()) {
        Some(s) => s,
        None => Sandbox::new().map_err(|e| Failure(format!("the sandbox could not start: {e}")))?,
    };
    let rt = &sandbox.rt;
    rt.set_memory_limit(limits.memory);
    rt.set_max_stack_size(limits.stack);
    let deadline = Instant::now() + limits.time;
    sandbox.deadline.store(since_base(deadline), Ordering::Relaxed);
    // The language's standard objects and JSON, RegExp, Map/Set and Promise (without
    // it an `async` handler leaks its frame): no clocks (`Date`, `performance`), and
    // nothing a webhook reshaping needs less than it costs at start (typed arrays,
    // `Proxy`, `WeakRef`: together they double the time a fresh context takes).
    let ctx = Context::custom::<(
        intrinsic::Eval,
        intrinsic::RegExpCompiler,
        intrinsic::RegExp,
        intrinsic::Json,
        intrinsic::MapSet,
        intrinsic::Promise,
    )>(rt)
    .map_err(|e| Failure(format!("the sandbox could not start: {e}")))?;
    let result = ctx.with(|ctx| {
        ctx.eval::<(), _>(script).catch(&ctx).map_err(|e| caught(e, "the script"))?;
        let handler: rquickjs::Value = ctx.globals().get("handler").catch(&ctx).map_err(|e| caught(e, "the script"))?;
        let Some(handler) = handler.into_function() else {
            return Err(Failure("the script must define a function handler(webhook)".into()));
        };
        f(ctx, handler)
    });
    drop(ctx);
    // The runtime serves this thread's next call only when this one left nothing in it:
    // it succeeded, queued no promise job (those hold the context), and after a
    // collection it holds no more than a fresh one would. Anything else is dropped
    // whole. Contexts are never reused, so no script sees another call's objects.
    if result.is_ok() && Instant::now() < deadline && !rt.is_job_pending() {
        rt.run_gc();
        if rt.memory_usage().memory_used_size < REUSE_BELOW {
            SANDBOX.with(|s| *s.borrow_mut() = Some(sandbox));
        }
    }
    // Past the deadline is a failure even when the script returned: an interrupt can be
    // swallowed (a `Promise` executor turns it into a rejection) and the call go on.
    if Instant::now() >= deadline {
        return Err(Failure(format!(
            "the transformation took longer than {} ms and was stopped",
            limits.time.as_millis()
        )));
    }
    result
}

/// A QuickJS runtime kept by a blocking-pool thread between calls (its creation and
/// teardown are a quarter of a call's cost); each call still gets a context of its own.
struct Sandbox {
    rt: Runtime,
    /// This call's deadline, in nanoseconds since [`BASE`], read by the interrupt handler.
    deadline: Arc<AtomicU64>,
}

impl Sandbox {
    fn new() -> rquickjs::Result<Self> {
        let rt = Runtime::new()?;
        let deadline = Arc::new(AtomicU64::new(0));
        let d = deadline.clone();
        rt.set_interrupt_handler(Some(Box::new(move || since_base(Instant::now()) >= d.load(Ordering::Relaxed))));
        Ok(Self { rt, deadline })
    }
}

thread_local! {
    static SANDBOX: RefCell<Option<Sandbox>> = const { RefCell::new(None) };
}

/// A runtime using more than this after a call and a collection is not reused.
const REUSE_BELOW: i64 = 1 << 20;

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

fn since_base(t: Instant) -> u64 {
    t.saturating_duration_since(*BASE).as_nanos() as u64
}

/// A thrown value as a short message (no stack: it would show the sandbox's insides).
fn caught(e: CaughtError<'_>, what: &str) -> Failure {
    let msg = match e {
        CaughtError::Exception(ex) => {
            let name = ex.get::<_, Option<String>>("name").ok().flatten().unwrap_or_else(|| "Error".into());
            let message = ex.message().unwrap_or_default();
            if message.contains("out of memory") {
                return Failure(format!("{what} ran out of memory (the limit is the sandbox's heap)"));
            }
            format!("{name}: {message}")
        }
        CaughtError::Value(v) => {
            let text = v.get::<rquickjs::Coerced<String>>().map(|c| c.0).unwrap_or_else(|_| "a value".into());
            format!("threw {text}")
        }
        CaughtError::Error(e) => {
            let t = e.to_string();
            if t.contains("llocation") || t.contains("memory") {
                return Failure(format!("{what} ran out of memory (the limit is the sandbox's heap)"));
            }
            t
        }
    };
    let mut msg = format!("{what}: {msg}");
    if msg.len() > 500 {
        let mut cut = 500;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push('…');
    }
    Failure(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hook() -> Webhook {
        Webhook {
            event_type: "user.registered".into(),
            payload: json!({"name": "Ada", "n": 1}),
            url: "https://example.test/hook".into(),
            headers: BTreeMap::new(),
        }
    }

    fn go(script: &str) -> Result<Outcome, Failure> {
        run(script, &hook(), &Limits::default())
    }

    #[test]
    fn reshapes_the_body_url_and_headers() {
        let out = go(r#"function handler(w) {
                w.payload = { text: `${w.event_type}: ${w.payload.name}` };
                w.url = w.url + "/slack";
                w.headers["x-team"] = "a";
                return w;
            }"#)
        .unwrap();
        let Outcome::Send(w) = out else { panic!("{out:?}") };
        assert_eq!(w.payload, json!({"text": "user.registered: Ada"}));
        assert_eq!(w.url, "https://example.test/hook/slack");
        assert_eq!(w.headers.get("x-team").map(String::as_str), Some("a"));
        // Fields left out keep their values.
        let Outcome::Send(w) = go("function handler(w) { return { payload: 1 }; }").unwrap() else { panic!() };
        assert_eq!((w.payload, w.url), (json!(1), "https://example.test/hook".to_owned()));
        assert_eq!(go("function handler(w) { w.cancel = true; return w; }").unwrap(), Outcome::Cancel);
    }

    #[test]
    fn every_way_to_fail_fails_the_call_only() {
        let fails = |s: &str| go(s).unwrap_err().0;
        assert!(fails("function handler(w) { throw new TypeError('nope'); }").contains("TypeError: nope"));
        assert!(fails("function handler(w) { throw 42; }").contains("42"));
        assert!(fails("let x = ;").contains("SyntaxError"), "{}", fails("let x = ;"));
        assert!(fails("var handler = 3;").contains("must define a function handler"));
        assert!(fails("function handler(w) { return 'text'; }").contains("must return the webhook object"));
        assert!(fails("async function handler(w) { return w; }").contains("not a promise"));
        assert!(fails("function handler(w) { return Promise.resolve(w); }").contains("not a promise"));
        assert!(fails("function handler(w) { return { payload: 1, oops: 2 }; }").contains("unknown field"));
        assert!(fails("function handler(w) { w.event_type = 'x'; return w; }").contains("event_type"));
        assert!(fails("function handler(w) { w.headers = {a: 1}; return w; }").contains("returned webhook"));

        let started = Instant::now();
        let e = fails("function handler(w) { for (;;) {} }");
        assert!(e.contains("longer than 50 ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let e = fails("while (true) {} function handler(w) { return w; }");
        assert!(e.contains("longer than 50 ms"), "{e}");
        let e = fails("function handler(w) { let a = []; for (;;) a.push('x'.repeat(1 << 16) + a.length); }");
        assert!(e.contains("memory") || e.contains("longer than"), "{e}");
        let e = fails("function handler(w) { return { payload: 'x'.repeat(1 << 30) }; }");
        assert!(e.contains("memory") || e.contains("length"), "{e}");
        let e = fails("function f(n) { return f(n + 1) + 1; } function handler(w) { return f(0); }");
        assert!(e.contains("stack") || e.contains("RangeError"), "{e}");
        let e = fails("function handler(w) { w.payload = 'x'.repeat(2 << 20); return w; }");
        assert!(e.contains("larger than"), "{e}");
        // An interrupt swallowed by a promise executor still fails the call.
        let e = fails("function handler(w) { new Promise(() => { for (;;) {} }); return w; }");
        assert!(e.contains("longer than 50 ms"), "{e}");
        let e = fails("function handler(w) { const a = []; for (;;) a.push(new Array(1e5).fill(a.length)); }");
        assert!(e.contains("ran out of memory"), "{e}");
        // Catastrophic backtracking is interrupted too.
        let e = fails("function handler(w) { /^(a+)+$/.test('a'.repeat(40) + 'b'); return w; }");
        assert!(e.contains("longer than 50 ms"), "{e}");
    }

    #[test]
    fn nothing_outside_the_language_is_reachable() {
        for probe in [
            "Date.now()",
            "new Date()",
            "performance.now()",
            "require('fs')",
            "fetch('http://127.0.0.1')",
            "std.open('/etc/passwd')",
            "os.exec(['true'])",
            "XMLHttpRequest",
            "process.env",
            "WebAssembly",
        ] {
            let e = go(&format!("function handler(w) {{ {probe}; return w; }}")).unwrap_err().0;
            assert!(e.contains("ReferenceError") && e.contains("is not defined"), "{probe}: {e}");
        }
        // No state between calls (the thread's runtime is reused; contexts never are),
        // nor after a call that queued a promise job or ran out of memory.
        let s = "var n = (globalThis.n || 0) + 1; globalThis.n = n; Object.prototype.seen = (Object.prototype.seen || 0) + 1;
                 function handler(w) { w.payload = [n, ({}).seen]; return w; }";
        let leaky = "function handler(w) { Promise.resolve().then(() => { globalThis.n = 99; }); return w; }";
        let bomb = "function handler(w) { const a = []; for (;;) a.push(new Array(1e5).fill(a.length)); }";
        for before in ["function handler(w) { return w; }", leaky, bomb, s] {
            let _ = go(before);
            let Outcome::Send(w) = go(s).unwrap() else { panic!() };
            assert_eq!(w.payload, json!([1, 1]), "after {before}");
        }
    }

    #[test]
    fn check_refuses_what_would_fail() {
        let l = Limits::default();
        assert!(check("function handler(w) { return w; }", &l).is_ok());
        assert!(check("function handle(w) { return w; }", &l).is_err());
        assert!(check(&"x".repeat(MAX_SCRIPT_BYTES + 1), &l).unwrap_err().0.contains("larger than"));
        assert!(check("for(;;){}", &l).unwrap_err().0.contains("longer than"));
    }
}
