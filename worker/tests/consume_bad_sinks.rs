//! The bad-input catalogue of sinks (issue 15): every way an HTTP endpoint can fail a delivery,
//! through the worker binary with the HTTP sink, three attempts and a dead-letter topic. Each
//! record is delivered (the endpoint accepted it at last) or dead-lettered once with the
//! endpoint's answer as its reason, and nothing is lost: every offset is committed only after
//! one or the other, and deliveries + dead letters = records produced. `make chaos` writes the
//! table of what was observed into docs/reliability.md.
//!
//! One worker for the endpoint's answers (the receiver answers by the record's key), one for
//! TLS to a server whose certificate no root the worker trusts vouches for (`openssl
//! s_server`, a real TLS stack), one for an address where nothing listens.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::consume::{ConsumeWorker, DeadLetter, TopicReader, group_reaches, produce};
use futures::StreamExt;
use pipewright_testenv::{create_topic, eventually, unique_name};

/// Attempts per record before it is dead-lettered.
const ATTEMPTS: u32 = 3;

/// One case: the record's key (the receiver answers by it), what the endpoint does, and
/// whether the record must end delivered or dead-lettered with that error kind.
struct Case {
    key: &'static str,
    endpoint: &'static str,
    expect: Result<(), &'static str>,
}

const ANSWERS: &[Case] = &[
    Case {
        key: "ok",
        endpoint: "answers 200",
        expect: Ok(()),
    },
    Case {
        key: "bad-request",
        endpoint: "answers 400 with a reason in the body",
        expect: Err("http_status_400"),
    },
    Case {
        key: "not-found",
        endpoint: "answers 404 (a wrong path)",
        expect: Err("http_status_404"),
    },
    Case {
        key: "unauthorized",
        endpoint: "answers 401 (credentials refused)",
        expect: Err("http_status_401"),
    },
    Case {
        key: "500-twice",
        endpoint: "answers 500 twice, then 200",
        expect: Ok(()),
    },
    Case {
        key: "503-always",
        endpoint: "answers 503 to every attempt",
        expect: Err("http_status_503"),
    },
    Case {
        key: "429-retry-after",
        endpoint: "answers 429 with `Retry-After: 1` once, then 200",
        expect: Ok(()),
    },
    Case {
        key: "slow",
        endpoint: "never answers within the timeout (300 ms)",
        expect: Err("http_timeout"),
    },
    Case {
        key: "hang-up",
        endpoint: "closes the connection without answering, every time",
        expect: Err("http_connect"),
    },
    Case {
        key: "hang-up-once",
        endpoint: "closes the connection without answering once, then 200",
        expect: Ok(()),
    },
    Case {
        key: "cut-body",
        endpoint: "answers 200 and closes the connection in the middle of its body",
        expect: Ok(()),
    },
];

/// The receiver's panic that drops a connection unanswered.
const HANG_UP: &str = "the receiver hangs up (on purpose)";

/// What the receiver saw: every request's key and when it came.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<(String, Instant)>>>,
}

async fn answer(State(r): State<Receiver>, headers: HeaderMap, _body: Bytes) -> Response {
    // The HTTP sink sends the record's key as the `ce-subject` of its CloudEvent.
    let key = headers
        .get("ce-subject")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let attempt = {
        let mut seen = r.seen.lock().unwrap();
        seen.push((key.clone(), Instant::now()));
        seen.iter().filter(|(k, _)| *k == key).count()
    };
    match (key.as_str(), attempt) {
        ("bad-request", _) => (StatusCode::BAD_REQUEST, "order_id: unknown order").into_response(),
        ("not-found", _) => StatusCode::NOT_FOUND.into_response(),
        ("unauthorized", _) => StatusCode::UNAUTHORIZED.into_response(),
        ("500-twice", 1 | 2) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        ("503-always", _) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        ("429-retry-after", 1) => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response()
        }
        ("slow", _) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        }
        // A panic in the handler drops the connection before any answer is written.
        ("hang-up", _) | ("hang-up-once", 1) => std::panic::panic_any(HANG_UP),
        ("cut-body", _) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"accepted\": tr")),
                Err(std::io::Error::other(
                    "the receiver hangs up mid-body (on purpose)",
                )),
            ];
            // The pause lets the status line and the first chunk leave before the cut.
            let body = futures::stream::iter(chunks).then(|chunk| async move {
                if chunk.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                chunk
            });
            Response::new(Body::from_stream(body))
        }
        _ => StatusCode::OK.into_response(),
    }
}

/// Runs one worker over `records` keys with the HTTP sink at `url` until every offset is
/// committed; returns the dead letters by key.
async fn deliver(name: &str, url: &str, keys: &[&str]) -> BTreeMap<String, Vec<DeadLetter>> {
    let topic = create_topic(name, 1).await;
    let dlq = create_topic(&format!("{name}-dlq"), 1).await;
    let group = unique_name(name);
    let records = keys
        .iter()
        .enumerate()
        .map(|(n, k)| {
            let value = common::consume::step(k, n as u64).into_bytes();
            (Some(k.to_string()), Some(value))
        })
        .collect();
    produce(&topic, records).await;
    let dead = TopicReader::start(&dlq, "read_committed");
    let attempts = ATTEMPTS.to_string();
    let sink = [
        "--sink",
        "http",
        "--sink-http-url",
        url,
        "--sink-http-timeout",
        "300ms",
    ];
    let args = [
        "--dead-letter-topic",
        &dlq,
        "--retry-max-attempts",
        &attempts,
        "--retry-backoff-initial",
        "50ms",
        "--retry-backoff-max",
        "5s",
        "--concurrency",
        "16",
    ];
    let mut worker = ConsumeWorker::start_with(&topic, &group, &sink, &args, &[]);
    group_reaches(&group, &topic, 1, keys.len() as i64).await;
    assert_eq!(worker.sigterm_and_wait().await, 0);
    // Dead letters are acknowledged before the offsets are committed.
    dead.caught_up().await;
    let mut by_key: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
    for l in dead.snapshot() {
        by_key
            .entry(l.key.clone().unwrap_or_default())
            .or_default()
            .push(l);
    }
    by_key
}

/// A TLS server with a certificate of its own CA, which the worker does not trust.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = std::env::temp_dir().join(unique_name("pw-unknown-ca"));
        std::fs::create_dir_all(&dir).unwrap();
        // A CA of its own, and the server's certificate signed by it.
        let openssl = |args: &[&str]| {
            let ok = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl (.ci/run installs it)");
            assert!(ok.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=pipewright test CA nobody trusts",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ]);
        let port = common::consume::free_addr().port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(dir.join("cert.pem"))
            .arg("-key")
            .arg(dir.join("key.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        TlsServer { child, port }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cell(text: &str) -> String {
    text.chars()
        .take(140)
        .collect::<String>()
        .replace('|', "\\|")
        .replace('\n', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_bad_sinks_catalogue_each_failing_endpoint_is_retried_or_dead_lettered_with_its_answer_nothing_lost()
 {
    // The receiver's deliberate panics (its way to hang up) print nothing.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&HANG_UP) {
            default_hook(info);
        }
    }));
    // The endpoint's answers.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/events", post(answer))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let keys: Vec<&str> = ANSWERS.iter().map(|c| c.key).collect();
    let mut letters = deliver("ec-bad-sinks", &url, &keys).await;

    // TLS to a server whose CA the worker does not know; nothing listening.
    let tls = TlsServer::start();
    let tls_url = format!("https://127.0.0.1:{}/events", tls.port);
    eventually(
        "openssl s_server listening",
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", tls.port))
                .await
                .ok()
        },
    )
    .await;
    letters.extend(deliver("ec-bad-sinks-tls", &tls_url, &["unknown-ca"]).await);
    drop(tls);
    let nobody = format!("http://{}/events", common::consume::free_addr());
    letters.extend(deliver("ec-bad-sinks-refused", &nobody, &["refused"]).await);

    let seen = receiver.seen.lock().unwrap().clone();
    let others = [
        Case {
            key: "unknown-ca",
            endpoint: "TLS with a certificate of an unknown CA (`openssl s_server`)",
            expect: Err("http_tls"),
        },
        Case {
            key: "refused",
            endpoint: "nothing listens at the address (connection refused)",
            expect: Err("http_connect"),
        },
    ];
    let mut table = String::from(
        "| endpoint | requests it got | answer | reason (`pipewright.error.message`, cut to 140 characters) |\n\
         |---|---:|---|---|\n",
    );
    let mut wrong = Vec::new();
    for c in ANSWERS.iter().chain(&others) {
        let requests = seen.iter().filter(|(k, _)| k == c.key).count();
        let dead = letters.remove(c.key).unwrap_or_default();
        let (answer, reason) = match (c.expect, dead.as_slice()) {
            (Ok(()), []) => ("delivered".to_string(), String::new()),
            (Err(kind), [l]) => {
                let got = &l.headers["pipewright.error.kind"];
                if got != kind {
                    wrong.push(format!(
                        "{}: dead-lettered as {got}, expected {kind}",
                        c.key
                    ));
                }
                if l.headers["pipewright.attempts"] != ATTEMPTS.to_string()
                    && !kind.starts_with("http_status_4")
                {
                    wrong.push(format!(
                        "{}: dead-lettered after {} attempts, expected {ATTEMPTS}",
                        c.key, l.headers["pipewright.attempts"]
                    ));
                }
                (
                    format!(
                        "dead-lettered after {} attempt(s): `{got}`",
                        l.headers["pipewright.attempts"]
                    ),
                    cell(&l.headers["pipewright.error.message"]),
                )
            }
            (_, dead) => {
                wrong.push(format!("{}: {} dead letters", c.key, dead.len()));
                continue;
            }
        };
        table.push_str(&format!(
            "| {} | {} | {answer} | {reason} |\n",
            c.endpoint,
            if c.key == "unknown-ca" || c.key == "refused" {
                "–".to_string()
            } else {
                requests.to_string()
            }
        ));
    }
    assert!(letters.is_empty(), "dead letters of no case: {letters:?}");
    // What each answer must lead to, beyond delivered or dead-lettered.
    let count = |key: &str| seen.iter().filter(|(k, _)| k == key).count();
    assert_eq!(count("bad-request"), 1, "a 4xx is not retried");
    assert_eq!(count("500-twice"), 3, "two 500s, then the 200");
    assert_eq!(count("503-always"), ATTEMPTS as usize);
    let retried_after: Vec<Instant> = seen
        .iter()
        .filter(|(k, _)| k == "429-retry-after")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(retried_after.len(), 2);
    assert!(
        retried_after[1] - retried_after[0] >= Duration::from_secs(1),
        "the retry waited for Retry-After: {:?}",
        retried_after[1] - retried_after[0]
    );
    println!("{table}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let total = ANSWERS.len() + others.len();
    pipewright_testenv::catalogue(
        "bad-input-sinks",
        &format!(
            "{total} records, one per endpoint, {ATTEMPTS} attempts each at most, a dead-letter \
             topic; every offset committed after its record was delivered or dead-lettered: \
             nothing lost.\n\n{table}"
        ),
    );
}
