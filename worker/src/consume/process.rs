//! What happens to one record, whatever its neighbours do: decoded into an event (or rejected
//! as no valid event), delivered to the [`Handler`] with retries (exponential backoff), and
//! dead-lettered, skipped or declared poison when it cannot be delivered. The [`Pipeline`]
//! decides when a record runs; this module decides what running it means.
//!
//! Every wait (the handler's call, a backoff) ends when the record is cancelled (its
//! partition was revoked, or the drain deadline passed): the record is then left unfinished,
//! so it is not committed and its partition's next owner delivers it.
//!
//! [`Pipeline`]: super::pipeline::Pipeline

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::dlq::{DeadLetters, Failure};
use super::events::{Handler, HandlerError, InvalidPolicy, Record, Rejection, RejectionKind};
use super::metrics::{ConsumerMetrics, KindLabels};
use super::pipeline::PipelineConfig;
use crate::{Error, traces};

/// How processing a record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered, skipped by policy, or acknowledged by the dead-letter topic: committable.
    Finished,
    /// Cancelled before it finished: left uncommitted.
    Cancelled,
    /// Could neither be delivered nor dead-lettered: the pipeline stops, left uncommitted.
    Failed,
}

/// The first error that stopped the pipeline, and the token that says it stopped.
#[derive(Debug, Default)]
pub struct Failed {
    error: Mutex<Option<Error>>,
    token: CancellationToken,
    /// Set before the token is cancelled: read for every record started, where the token's
    /// own check takes a lock.
    flag: AtomicBool,
}

impl Failed {
    /// Stops the pipeline with `e` (the first error wins).
    pub fn fail(&self, e: Error) {
        error!(error = %crate::Chain(&e), "stopping the consumer");
        self.error.lock().unwrap().get_or_insert(e);
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn is_failed(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub fn take_error(&self) -> Option<Error> {
        self.error.lock().unwrap().take()
    }
}

/// Processes records for a handler.
#[derive(Debug)]
pub struct Processor<H> {
    pub handler: H,
    pub config: PipelineConfig,
    pub dead_letters: Option<DeadLetters>,
    pub metrics: ConsumerMetrics,
    pub failed: Failed,
}

/// What is left of a record that [`Processor::start_now`] could not end without waiting.
#[derive(Debug)]
pub struct Rest<E> {
    decoded: Result<E, Rejection>,
    /// The failure of the first attempt, when it was made at once ([`Handler::handle_now`]);
    /// boxed: rare, and the rest of every record that waits is moved around.
    first: Option<Box<HandlerError>>,
}

impl<H: Handler> Processor<H> {
    /// Decodes, delivers (with retries) or dead-letters `record`; stops at the next wait when
    /// `cancel` is cancelled (the caller checks it before starting a record).
    pub async fn process(&self, record: &Record, cancel: &CancellationToken) -> Outcome {
        match self.start_now(record) {
            Ok(outcome) => outcome,
            Err(rest) => self.finish(record, rest, cancel).await,
        }
    }

    /// Runs `record` as far as it goes without waiting: decoded, and delivered when the
    /// handler can do that at once. `Ok`: it ended (delivered); `Err`: the rest is for
    /// [`Processor::finish`].
    pub fn start_now(&self, record: &Record) -> Result<Outcome, Rest<H::Event>> {
        let event = match self.decode(record) {
            Ok(event) => event,
            Err(rejection) => {
                return Err(Rest {
                    decoded: Err(rejection),
                    first: None,
                });
            }
        };
        let started = Instant::now();
        let Some(result) = self.handler.handle_now(&event, record) else {
            return Err(Rest {
                decoded: Ok(event),
                first: None,
            });
        };
        self.metrics
            .handler_latency_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.delivered();
                Ok(Outcome::Finished)
            }
            Err(e) => Err(Rest {
                decoded: Ok(event),
                first: Some(Box::new(e)),
            }),
        }
    }

    /// Goes on with what [`Processor::start_now`] left.
    pub async fn finish(
        &self,
        record: &Record,
        rest: Rest<H::Event>,
        cancel: &CancellationToken,
    ) -> Outcome {
        let event = match rest.decoded {
            Ok(event) => event,
            // Boxed, like the dead-letter path below: rare paths whose futures (a Kafka
            // produce) would otherwise size every record's future.
            Err(rejection) => return Box::pin(self.reject(record, rejection, cancel)).await,
        };
        let mut first = rest.first;
        // Built at the first failure: most records never need it.
        let mut delays = None;
        let mut attempts = 0u32;
        let mut first_failure = None;
        loop {
            attempts += 1;
            let result = match first.take() {
                Some(failed) => Err(*failed),
                None => {
                    let started = Instant::now();
                    let result = tokio::select! {
                        biased;
                        result = self.handler.handle(&event, record) => result,
                        _ = cancel.cancelled() => return Outcome::Cancelled,
                    };
                    self.metrics
                        .handler_latency_seconds
                        .observe(started.elapsed().as_secs_f64());
                    result
                }
            };
            let err = match result {
                Ok(()) => {
                    self.delivered();
                    return Outcome::Finished;
                }
                Err(err) => err,
            };
            self.metrics.delivery.failed(&err.kind);
            let first_failure = *first_failure.get_or_insert_with(Utc::now);
            let next = || {
                delays
                    .get_or_insert_with(|| self.config.retry.delays())
                    .next()
            };
            match err.retryable.then(next).flatten() {
                Some(backoff) => {
                    let delay = self.config.retry.wait(backoff, err.retry_after);
                    self.metrics.retried.inc();
                    warn!(
                        topic = %record.topic, partition = record.partition, offset = record.offset,
                        attempt = attempts, error.kind = %err.kind, error = %err.message,
                        retry_in = ?delay, "delivery failed; retrying"
                    );
                    if let Some(cx) = &record.trace {
                        traces::attempt_failed(cx, attempts, &err.kind, &err.message, delay);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Outcome::Cancelled,
                    }
                }
                None => {
                    if let Some(cx) = &record.trace {
                        traces::attempt_failed(
                            cx,
                            attempts,
                            &err.kind,
                            &err.message,
                            Duration::ZERO,
                        );
                    }
                    let failure = Failure {
                        kind: err.kind,
                        message: err.message,
                        attempts,
                        first_failure,
                    };
                    return Box::pin(self.dead_letter(record, failure, cancel)).await;
                }
            }
        }
    }

    fn decode(&self, record: &Record) -> Result<H::Event, Rejection> {
        let size = record.payload.as_ref().map_or(0, Vec::len);
        if size > self.config.max_record_bytes {
            return Err(Rejection {
                kind: RejectionKind::Oversized,
                message: format!(
                    "the value has {size} bytes, more than the maximum of {}",
                    self.config.max_record_bytes
                ),
                event_type: None,
            });
        }
        self.handler.decode(record)
    }

    fn delivered(&self) {
        self.metrics.processed.inc();
        self.metrics.delivery.succeeded();
    }

    async fn reject(
        &self,
        record: &Record,
        rejection: Rejection,
        cancel: &CancellationToken,
    ) -> Outcome {
        self.metrics
            .rejected
            .get_or_create(&KindLabels {
                kind: rejection.kind.as_str().to_string(),
            })
            .inc();
        match self.config.on_invalid {
            InvalidPolicy::Skip => {
                info!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    kind = rejection.kind.as_str(), reason = %rejection.message,
                    "skipping a record that is not a valid event"
                );
                self.metrics.skipped.inc();
                if let Some(cx) = &record.trace {
                    traces::delivery_ended(cx, "skipped");
                }
                Outcome::Finished
            }
            InvalidPolicy::DeadLetter => {
                let failure = Failure {
                    kind: rejection.kind.as_str().to_string(),
                    message: rejection.message,
                    attempts: 0,
                    first_failure: Utc::now(),
                };
                self.dead_letter(record, failure, cancel).await
            }
            InvalidPolicy::Fail => self.poison(
                record,
                rejection.kind.as_str().to_string(),
                rejection.message,
            ),
        }
    }

    async fn dead_letter(
        &self,
        record: &Record,
        failure: Failure,
        cancel: &CancellationToken,
    ) -> Outcome {
        let Some(dead_letters) = &self.dead_letters else {
            return self.poison(record, failure.kind, failure.message);
        };
        let sent = tokio::select! {
            biased;
            sent = dead_letters.send(record, &failure) => sent,
            _ = cancel.cancelled() => return Outcome::Cancelled,
        };
        match sent {
            Ok(()) => {
                warn!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    dead_letters = %dead_letters.destination(), error.kind = %failure.kind,
                    error = %failure.message, attempts = failure.attempts,
                    "record dead-lettered"
                );
                self.metrics.dead_lettered.inc();
                if let Some(cx) = &record.trace {
                    traces::delivery_failed(cx, "dead-lettered", &failure.kind, &failure.message);
                }
                Outcome::Finished
            }
            Err(e) => {
                self.failed.fail(e);
                Outcome::Failed
            }
        }
    }

    fn poison(&self, record: &Record, kind: String, message: String) -> Outcome {
        if let Some(cx) = &record.trace {
            traces::delivery_failed(cx, "poison", &kind, &message);
        }
        self.failed.fail(Error::PoisonMessage {
            record: record.id(),
            kind,
            message,
        });
        Outcome::Failed
    }
}
