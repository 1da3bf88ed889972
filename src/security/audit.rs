//! The audit trail of security events: TLS handshakes (completed, failed by reason),
//! failed authentications and ACL denials, each counted in this shard's metrics (summed in
//! `/metrics`) and, for failures, logged at most once a second per kind (a client can cause
//! them at will; the counts stay exact).
//!
//! Called by the protocol layers on the shard that holds the connection.

use crate::metrics::{self, Protocol};
use crate::util::LogLimit;

thread_local! {
    static TLS_LOG: LogLimit = const { LogLimit::new() };
    static AUTH_LOG: LogLimit = const { LogLimit::new() };
    static ACL_LOG: LogLimit = const { LogLimit::new() };
}

/// A TLS handshake completed.
pub fn tls_handshake(protocol: Protocol) {
    metrics::with(|m| m.protocol(protocol).tls_handshakes += 1);
}

/// A TLS handshake failed; `reason` is the metric label (`timeout`, `no_certificate`,
/// `bad_certificate`, `protocol`, `io`), `line` the log line.
pub fn tls_failure(protocol: Protocol, reason: &'static str, line: impl FnOnce() -> String) {
    metrics::with(|m| *m.protocol(protocol).tls_failures.entry(reason).or_default() += 1);
    TLS_LOG.with(|l| l.warn(line));
}

/// An authentication failed (wrong password, unknown user, bad SASL exchange).
pub fn auth_failure(protocol: Protocol, mechanism: &'static str, line: impl FnOnce() -> String) {
    metrics::with(|m| {
        *m.protocol(protocol)
            .auth_failures
            .entry(mechanism)
            .or_default() += 1
    });
    AUTH_LOG.with(|l| l.warn(line));
}

/// An ACL refused an operation on a resource.
pub fn acl_denied(
    protocol: Protocol,
    operation: &'static str,
    resource_type: &'static str,
    line: impl FnOnce() -> String,
) {
    metrics::with(|m| {
        *m.protocol(protocol)
            .acl_denials
            .entry((operation, resource_type))
            .or_default() += 1
    });
    ACL_LOG.with(|l| l.warn(line));
}
