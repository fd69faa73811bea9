//! An HTTP receiver for the http sink, in the test process: it answers each request as a
//! policy decides (a delay, then a status) and keeps one global arrival log, in the order the
//! answers were given, of who sent what (the `X-Worker` header, the step event's key and n,
//! the partition and offset of the `ce-id` header) and what it answered.
//!
//! An answer is logged just before it is sent: a worker sees a 2xx only after it is in the
//! log, so the log order is the order in which deliveries completed.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// A request as the policy sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub worker: String,
    pub key: String,
    pub n: u64,
    /// 1 for the first request of this (key, n), 2 for the second, ...
    pub attempt: u32,
    /// Since the receiver started.
    pub at: Duration,
}

/// What the receiver answers, after `delay`.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub delay: Duration,
    pub status: StatusCode,
}

impl Answer {
    pub fn ok_after(delay: Duration) -> Answer {
        Answer {
            delay,
            status: StatusCode::OK,
        }
    }

    pub fn unavailable_after(delay: Duration) -> Answer {
        Answer {
            delay,
            status: StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// When the answer was given, since the receiver started.
    pub at: Duration,
    pub worker: String,
    pub key: String,
    pub n: u64,
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub status: u16,
}

impl Arrival {
    /// A 2xx answer: the record is delivered.
    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

type Policy = dyn Fn(&Request) -> Answer + Send + Sync;

#[derive(Clone)]
struct Shared {
    started: Instant,
    policy: Arc<Policy>,
    attempts: Arc<Mutex<HashMap<(String, u64), u32>>>,
    log: Arc<Mutex<Vec<Arrival>>>,
}

/// A running receiver; `url` is what `--sink-http-url` takes.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    started: Instant,
    log: Arc<Mutex<Vec<Arrival>>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// The flags of an HTTP sink to this receiver that names its worker in `X-Worker`.
    pub fn sink_args(&self, worker: &str) -> [String; 6] {
        [
            "--sink".into(),
            "http".into(),
            "--sink-http-url".into(),
            self.url.clone(),
            "--sink-http-headers".into(),
            format!("X-Worker={worker}"),
        ]
    }

    /// Serves on a free loopback port until the test ends.
    pub async fn start(policy: impl Fn(&Request) -> Answer + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let shared = Shared {
            started: Instant::now(),
            policy: Arc::new(policy),
            attempts: Arc::default(),
            log: Arc::default(),
        };
        let receiver = Receiver {
            url,
            started: shared.started,
            log: shared.log.clone(),
        };
        let app = Router::new()
            .route("/events", post(receive))
            .with_state(shared);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    /// Since the receiver started (the clock of [`Arrival::at`]).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every answered request, in answer order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.log.lock().unwrap().clone()
    }

    /// The 2xx answers, in answer order.
    pub fn delivered(&self) -> Vec<Arrival> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|a| a.delivered()).cloned().collect()
    }

    /// How many 2xx answers there were.
    pub fn delivered_count(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|a| a.delivered()).count()
    }

    /// How many distinct `n` were answered 2xx.
    pub fn distinct_delivered(&self) -> usize {
        let log = self.log.lock().unwrap();
        let mut ns: Vec<u64> = log.iter().filter(|a| a.delivered()).map(|a| a.n).collect();
        ns.sort_unstable();
        ns.dedup();
        ns.len()
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let key = value["key"].as_str().unwrap_or_default().to_string();
    let n = value["n"].as_u64().unwrap_or(u64::MAX);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let worker = header("x-worker");
    // ce-id is <topic>/<partition>/<offset>.
    let id = header("ce-id");
    let mut parts = id.rsplitn(3, '/');
    let offset = parts.next().and_then(|o| o.parse().ok()).unwrap_or(-1);
    let partition = parts.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
    let attempt = {
        let mut attempts = shared.attempts.lock().unwrap();
        let count = attempts.entry((key.clone(), n)).or_default();
        *count += 1;
        *count
    };
    let request = Request {
        worker: worker.clone(),
        key: key.clone(),
        n,
        attempt,
        at: shared.started.elapsed(),
    };
    let answer = (shared.policy)(&request);
    tokio::time::sleep(answer.delay).await;
    shared.log.lock().unwrap().push(Arrival {
        at: shared.started.elapsed(),
        worker,
        key,
        n,
        partition,
        offset,
        attempt,
        status: answer.status.as_u16(),
    });
    answer.status
}

/// A delay between `min` and `max` milliseconds, pseudo-random but the same for the same
/// (key, n, attempt): runs are reproducible.
pub fn jitter(request: &Request, min_ms: u64, max_ms: u64) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&request.key, request.n, request.attempt).hash(&mut h);
    Duration::from_millis(min_ms + h.finish() % (max_ms - min_ms + 1))
}
