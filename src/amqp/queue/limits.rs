//! `x-max-length` / `x-max-length-bytes` and what `x-overflow` does when a queue is full:
//! `drop-head` (the oldest ready messages go, dead-lettered `maxlen`), `reject-publish`
//! (the new message is refused: basic.nack to a confirming publisher) and
//! `reject-publish-dlx` (refused and dead-lettered).
//!
//! Pure decisions over the queue's arguments and its ready counts; `QueueState` acts on
//! them. Only ready messages count, as in RabbitMQ.

use crate::catalog::amqp::arguments::{Overflow, QueueArgs};

/// Whether a message of `size` body bytes is refused at publish: the queue rejects on
/// overflow and taking it would pass a limit.
pub fn rejects(args: &QueueArgs, ready_len: usize, ready_bytes: u64, size: u64) -> bool {
    matches!(
        args.overflow,
        Overflow::RejectPublish | Overflow::RejectPublishDlx
    ) && (args
        .max_length
        .map(|m| ready_len as u64 + 1 > m)
        .unwrap_or(false)
        || args
            .max_length_bytes
            .map(|m| ready_bytes + size > m)
            .unwrap_or(false))
}

/// Whether a refused message is dead-lettered (`reject-publish-dlx`).
pub fn rejected_dead_letters(args: &QueueArgs) -> bool {
    args.overflow == Overflow::RejectPublishDlx
}

/// Whether the queue has a length limit (in messages or bytes) at all.
pub fn limited(args: &QueueArgs) -> bool {
    args.max_length.is_some() || args.max_length_bytes.is_some()
}

/// Whether a drop-head queue holds more than its limits and must drop its oldest message.
pub fn over_drop_head(args: &QueueArgs, ready_len: usize, ready_bytes: u64) -> bool {
    args.overflow == Overflow::DropHead
        && (args
            .max_length
            .map(|m| ready_len as u64 > m)
            .unwrap_or(false)
            || args
                .max_length_bytes
                .map(|m| ready_bytes > m)
                .unwrap_or(false))
}
