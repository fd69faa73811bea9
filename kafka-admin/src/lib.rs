//! The librdkafka Admin calls rust-rdkafka does not wrap yet, on a rust-rdkafka client.
//!
//! [`committed`]: a consumer group's committed offsets, read with ListConsumerGroupOffsets
//! (OffsetFetch for any group, KIP-88) on a shared client, so that one client per Kafka
//! cluster measures every group on it. rust-rdkafka 0.39's `committed_offsets` reads the
//! client's *own* `group.id`, which takes one client, and its connections, per group; its
//! AdminClient has no such call (rust-rdkafka issue 659; PR 785 adds it, unmerged). So this
//! calls librdkafka's C API (the 2.12 that rdkafka-sys vendors) directly.
//!
//! The workspace's only unsafe code lives here: every native object is freed by a guard on
//! every path, and result data is copied out before its event is freed. When rust-rdkafka
//! ships the call, this crate goes.
//!
//! **The client must have a `group.id`** (it is never joined: no subscribe, no assign). When the
//! broker answers OffsetFetch with a coordinator error (`NOT_COORDINATOR`: the group's
//! coordinator moved, as in a broker restart, or a fresh cluster still creating
//! `__consumer_offsets`), librdkafka 2.12 asks the *client's* consumer group to look up its
//! coordinator again, and a client without `group.id` has none: it dereferences a null pointer
//! and the process dies (SIGSEGV in `rd_kafka_cgrp_op` from `rd_kafka_handle_OffsetFetch`;
//! librdkafka issue 5040, open). [`committed`] refuses such a client before any request, and
//! asks again, within its timeout, while the answer is a coordinator error.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Committed offset per (topic, partition) of `group`; `None`: the group committed nothing
/// for that partition.
pub type Committed = HashMap<(String, i32), Option<i64>>;

/// The pause before asking again after a coordinator error.
const COORDINATOR_RETRY: Duration = Duration::from_millis(100);

/// Reads the committed offsets of `group` for the partitions in `partitions` (blocking: call
/// it on the blocking pool). `client` must have a `group.id` (see the crate's documentation;
/// without one: `InvalidArgument`, nothing sent). A coordinator error is asked again after
/// [`COORDINATOR_RETRY`] until `timeout` has passed, then returned; a broker that does not
/// answer within `timeout` is an error.
pub fn committed<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    group: &str,
    partitions: &TopicPartitionList,
    timeout: Duration,
) -> Result<Committed, KafkaError> {
    let group = CString::new(group).map_err(|_| admin_error(RDKafkaErrorCode::InvalidArgument))?;
    let client = client.client();
    if !has_group_id(client) {
        return Err(admin_error(RDKafkaErrorCode::InvalidArgument));
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match list_offsets(client, &group, partitions, left) {
            Err(KafkaError::AdminOp(code))
                if is_coordinator_error(code) && left > COORDINATOR_RETRY =>
            {
                std::thread::sleep(COORDINATOR_RETRY);
            }
            result => return result,
        }
    }
}

fn is_coordinator_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::CoordinatorLoadInProgress
    )
}

/// Whether the client was made with a non-empty `group.id`.
fn has_group_id<C: ClientContext>(client: &Client<C>) -> bool {
    let rk = client.native_ptr();
    let mut size = 0;
    // SAFETY: `rk` is a live client; its configuration lives as long as it does. The name is
    // a NUL-terminated literal; with no destination librdkafka writes nothing but `size`, the
    // value's length with its NUL (an unset value is not `RD_KAFKA_CONF_OK`).
    let result = unsafe {
        rd::rd_kafka_conf_get(
            rd::rd_kafka_conf(rk),
            c"group.id".as_ptr(),
            std::ptr::null_mut(),
            &mut size,
        )
    };
    result == rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK && size > 1
}

/// One ListConsumerGroupOffsets request and its answer.
fn list_offsets<C: ClientContext>(
    client: &Client<C>,
    group: &CStr,
    partitions: &TopicPartitionList,
    timeout: Duration,
) -> Result<Committed, KafkaError> {
    let rk = client.native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is a live client for the duration of the call (`client` is borrowed);
    // every pointer passed is valid, and every object created is destroyed by a guard
    // (request and options right after the call, which copies them; queue and event at the
    // end of scope). Result data is copied out before the event is destroyed.
    unsafe {
        let queue = Guard(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        let mut request = Guard(
            rd::rd_kafka_ListConsumerGroupOffsets_new(group.as_ptr(), partitions.ptr()),
            rd::rd_kafka_ListConsumerGroupOffsets_destroy,
        );
        let options = Guard(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS,
            ),
            rd::rd_kafka_AdminOptions_destroy,
        );
        let mut errstr = [0 as c_char; 256];
        let set = rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        if set != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(admin_error(set.into()));
        }
        rd::rd_kafka_ListConsumerGroupOffsets(rk, &mut request.0, 1, options.0, queue.0);
        drop(request);
        drop(options);
        // The request timeout bounds the operation; the margin covers the queueing.
        let event = Guard(
            rd::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1000)),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            return Err(admin_error(RDKafkaErrorCode::OperationTimedOut));
        }
        let err = rd::rd_kafka_event_error(event.0);
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return Err(admin_error(err.into()));
        }
        let result = rd::rd_kafka_event_ListConsumerGroupOffsets_result(event.0);
        if result.is_null() {
            return Err(admin_error(RDKafkaErrorCode::Fail));
        }
        let mut count = 0usize;
        let groups = rd::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut count);
        let mut committed = Committed::new();
        for i in 0..count {
            let group = *groups.add(i);
            let error = rd::rd_kafka_group_result_error(group);
            if !error.is_null() {
                return Err(admin_error(rd::rd_kafka_error_code(error).into()));
            }
            let list = rd::rd_kafka_group_result_partitions(group);
            if list.is_null() {
                continue;
            }
            let list = &*list;
            let elems =
                std::slice::from_raw_parts(list.elems, usize::try_from(list.cnt).unwrap_or(0));
            for e in elems {
                if e.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    return Err(admin_error(e.err.into()));
                }
                let topic = CStr::from_ptr(e.topic).to_string_lossy().into_owned();
                // A negative offset (-1001, RD_KAFKA_OFFSET_INVALID) is "nothing committed".
                let offset = (e.offset >= 0).then_some(e.offset);
                committed.insert((topic, e.partition), offset);
            }
        }
        Ok(committed)
    }
}

fn admin_error(code: RDKafkaErrorCode) -> KafkaError {
    KafkaError::AdminOp(code)
}

/// Frees a native object when dropped.
#[derive(Debug)]
struct Guard<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from its constructor and is freed once, here.
            unsafe { (self.1)(self.0) }
        }
    }
}
