//! The termination message a worker leaves when it stops for a reason a person must see, and
//! that the operator turns into a `Degraded` condition: the worker writes it to its
//! termination-message file, the kubelet copies it into the pod's container status
//! (`state.terminated.message`, then `lastState` once the container restarted), the operator
//! reads it there. Both sides use this module, so the format is written once.
//!
//! - `PoisonMessage: <topic>/<partition>/<offset> (<kind>): <error>`: a record failed every
//!   retry and there was no dead-letter topic. The coordinates let the operator tell when the
//!   group has moved past the record (the cause is gone) without guessing from timings.
//! - `WorkerConfigRejected: <error>`: the worker refused its configuration (exit code 2).
//! - `OutboxTableInvalid: <error>`: the outbox worker refused its table (missing, a column
//!   missing or of the wrong type, no stamping trigger; exit code 1): the table must change.
//!
//! Never a payload or a secret value: the error texts are the worker's own, which hold
//! neither. The kubelet keeps at most 4 KiB; the worker writes at most [`MAX_LEN`] bytes.

use std::fmt;
use std::str::FromStr;

/// The prefix of a poison-message report.
pub const POISON_MESSAGE_PREFIX: &str = "PoisonMessage: ";
/// The prefix of a refused-configuration report.
pub const CONFIG_REJECTED_PREFIX: &str = "WorkerConfigRejected: ";
/// The prefix of a refused-outbox-table report.
pub const OUTBOX_TABLE_INVALID_PREFIX: &str = "OutboxTableInvalid: ";
/// The most bytes a worker writes (cut at a character boundary).
pub const MAX_LEN: usize = 1024;

/// A record's coordinates, written `<topic>/<partition>/<offset>` (a topic name cannot hold
/// a `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl FromStr for RecordRef {
    type Err = String;

    fn from_str(s: &str) -> Result<RecordRef, String> {
        let mut parts = s.rsplitn(3, '/');
        let (Some(offset), Some(partition), Some(topic)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{s:?} is not <topic>/<partition>/<offset>"));
        };
        Ok(RecordRef {
            topic: topic.to_string(),
            partition: partition
                .parse()
                .map_err(|_| format!("{s:?}: partition {partition:?} is not a number"))?,
            offset: offset
                .parse()
                .map_err(|_| format!("{s:?}: offset {offset:?} is not a number"))?,
        })
    }
}

/// Why a worker stopped, as its termination message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Termination {
    /// A record failed every retry and there was no dead-letter topic to park it in.
    /// `record` is `None` when the coordinates could not be read (an older worker): the
    /// report still stands, but cannot be matched against committed offsets.
    Poison {
        record: Option<RecordRef>,
        /// `(<kind>): <error>` as written.
        detail: String,
    },
    /// The worker refused its configuration.
    ConfigRejected(String),
    /// The outbox worker refused its table.
    TableRefused(String),
}

impl Termination {
    /// The message a worker writes, cut to [`MAX_LEN`] bytes.
    pub fn message(&self) -> String {
        let mut text = match self {
            Termination::Poison {
                record: Some(record),
                detail,
            } => format!("{POISON_MESSAGE_PREFIX}{record} {detail}"),
            Termination::Poison {
                record: None,
                detail,
            } => format!("{POISON_MESSAGE_PREFIX}{detail}"),
            Termination::ConfigRejected(error) => format!("{CONFIG_REJECTED_PREFIX}{error}"),
            Termination::TableRefused(error) => format!("{OUTBOX_TABLE_INVALID_PREFIX}{error}"),
        };
        if text.len() > MAX_LEN {
            let mut end = MAX_LEN;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        text
    }

    /// A poison-message report for `record`, failed with `error` of `kind`.
    pub fn poison(record: RecordRef, kind: &str, error: &str) -> Termination {
        Termination::Poison {
            record: Some(record),
            detail: format!("({kind}): {error}"),
        }
    }

    /// Reads a termination message; `None` for one that is not a worker's report (an
    /// `OOMKilled`, a panic's last words).
    pub fn parse(message: &str) -> Option<Termination> {
        if let Some(rest) = message.strip_prefix(POISON_MESSAGE_PREFIX) {
            let rest = rest.trim();
            let (first, detail) = rest.split_once(' ').unwrap_or((rest, ""));
            return Some(match first.parse::<RecordRef>() {
                Ok(record) => Termination::Poison {
                    record: Some(record),
                    detail: detail.to_string(),
                },
                Err(_) => Termination::Poison {
                    record: None,
                    detail: rest.to_string(),
                },
            });
        }
        if let Some(rest) = message.strip_prefix(OUTBOX_TABLE_INVALID_PREFIX) {
            return Some(Termination::TableRefused(rest.trim().to_string()));
        }
        message
            .strip_prefix(CONFIG_REJECTED_PREFIX)
            .map(|rest| Termination::ConfigRejected(rest.trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_table_reads_back() {
        let t = Termination::TableRefused("outbox table app.outbox does not exist".into());
        assert_eq!(
            t.message(),
            "OutboxTableInvalid: outbox table app.outbox does not exist"
        );
        assert_eq!(Termination::parse(&t.message()), Some(t));
    }

    #[test]
    fn a_poison_report_reads_back_with_its_coordinates() {
        let record = RecordRef {
            topic: "orders.v2".into(),
            partition: 3,
            offset: 17,
        };
        let t = Termination::poison(record.clone(), "sink", "HTTP 500");
        let message = t.message();
        assert_eq!(message, "PoisonMessage: orders.v2/3/17 (sink): HTTP 500");
        assert_eq!(Termination::parse(&message), Some(t));
    }

    #[test]
    fn a_refused_configuration_reads_back() {
        let t = Termination::ConfigRejected("sink.http.url: relative URL".into());
        assert_eq!(Termination::parse(&t.message()), Some(t));
    }

    #[test]
    fn other_messages_are_not_reports_and_bad_coordinates_keep_the_report() {
        assert_eq!(Termination::parse("OOMKilled"), None);
        assert_eq!(
            Termination::parse("PoisonMessage: garbage here"),
            Some(Termination::Poison {
                record: None,
                detail: "garbage here".into()
            })
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let t = Termination::ConfigRejected("é".repeat(MAX_LEN));
        let message = t.message();
        assert!(message.len() <= MAX_LEN);
        assert!(message.starts_with(CONFIG_REJECTED_PREFIX));
    }
}
