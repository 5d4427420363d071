//! A real HTTP server on 127.0.0.1 that records every request it gets and answers as
//! scripted: statuses, extra headers (`Retry-After`, `Location`), or never (a hang).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Respond {
    /// This status with a small body.
    Status(u16),
    /// This status with these headers.
    WithHeaders(u16, Vec<(&'static str, String)>),
    /// Answer after this long (longer than the client's timeout: a hang).
    After(Duration, u16),
    /// This status with a body of this many bytes.
    Big(u16, usize),
    /// This status with exactly these body bytes (NUL bytes, invalid UTF-8, ...).
    Body(u16, Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
struct State {
    script: VecDeque<Respond>,
    default: Option<Respond>,
    requests: Vec<Request>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<State>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut s = state.lock().unwrap();
        s.requests.push(Request { at: Instant::now(), method, path: uri.path().to_owned(), headers, body });
        s.script.pop_front().or_else(|| s.default.clone()).unwrap_or(Respond::Status(200))
    };
    let code = |c: u16| StatusCode::from_u16(c).unwrap();
    match answer {
        Respond::Status(c) => (code(c), format!("status {c} from the test receiver")).into_response(),
        Respond::WithHeaders(c, hs) => {
            let mut r = (code(c), "scripted").into_response();
            for (k, v) in hs {
                r.headers_mut().insert(k, v.parse().unwrap());
            }
            r
        }
        Respond::After(d, c) => {
            tokio::time::sleep(d).await;
            (code(c), "late").into_response()
        }
        Respond::Big(c, n) => (code(c), "x".repeat(n)).into_response(),
        Respond::Body(c, bytes) => (code(c), bytes).into_response(),
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let app = Router::new().fallback(handle).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers to give, in order, before falling back to the default (200).
    pub fn script(&self, answers: Vec<Respond>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    pub fn set_default(&self, answer: Respond) {
        self.state.lock().unwrap().default = Some(answer);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}
