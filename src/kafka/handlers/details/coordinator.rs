//! The preamble of the group APIs: check the ACLs and the group id, ask the group's
//! coordinator shard, and map a refusal to the error code the client gets.
//!
//! Runs on the connection's shard; `Shard::group` is where the work crosses to the
//! coordinator (the shard `groups::group_owner` names for the group).

use std::convert::Infallible;

use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;

use super::authorize::group_denied;
use crate::kafka::groups::{Reply, Request};
use crate::kafka::handlers::Conn;
use crate::security::acl::{Operation, ResourceType};

/// Whether `group` is a group id `api` accepts, as Kafka decides: the offset and admin
/// APIs (OffsetCommit, OffsetFetch, DescribeGroups, DeleteGroups) accept the empty id (old
/// consumers commit offsets under it, and an admin must be able to see and delete what
/// they left); the APIs of members (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and
/// OffsetDelete need a non-empty one.
pub fn valid_id(api: ApiKey, group: &str) -> bool {
    match api {
        ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups => true,
        _ => !group.is_empty(),
    }
}

/// The operation on the group the ACLs must allow for `api`, as Kafka: members' APIs and
/// OffsetCommit READ, OffsetFetch, DescribeGroups and ConsumerGroupDescribe DESCRIBE, DeleteGroups and
/// OffsetDelete DELETE.
pub fn operation(api: ApiKey) -> Operation {
    match api {
        ApiKey::OffsetFetch | ApiKey::DescribeGroups | ApiKey::ConsumerGroupDescribe => {
            Operation::Describe
        }
        ApiKey::DeleteGroups | ApiKey::OffsetDelete => Operation::Delete,
        _ => Operation::Read,
    }
}

/// Asks `group`'s coordinator shard for `request` (on behalf of `api`) and gives the
/// answer `pick` takes from its reply. Otherwise the error code for the client:
/// GROUP_AUTHORIZATION_FAILED when the ACLs refuse `api`'s operation on the group
/// (`operation`; checked first, as Kafka does), INVALID_GROUP_ID for an id `api` refuses
/// (`valid_id`; the coordinator is not asked), the coordinator's own code
/// (`Reply::Code`), or COORDINATOR_NOT_AVAILABLE when the coordinator could not answer or
/// answered in a form `pick` does not take.
pub async fn ask<T>(
    conn: &Conn,
    api: ApiKey,
    group: &str,
    request: Request,
    pick: impl FnOnce(Reply) -> Option<T>,
) -> Result<T, i16> {
    if !conn.authorize(operation(api), ResourceType::Group, group) {
        return Err(group_denied());
    }
    if !valid_id(api, group) {
        return Err(ResponseError::InvalidGroupId.code());
    }
    match conn.shard.group(group, request).await {
        Reply::Code(code) => Err(code),
        reply => pick(reply).ok_or(ResponseError::CoordinatorNotAvailable.code()),
    }
}

/// `ask` for a request the coordinator answers with a bare code (`Reply::Code`, 0 for
/// success): that code, or the error code `ask` gives.
pub async fn ask_code(conn: &Conn, api: ApiKey, group: &str, request: Request) -> i16 {
    match ask(conn, api, group, request, |_| None::<Infallible>).await {
        Ok(never) => match never {},
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_need_a_group_id_and_offsets_do_not() {
        for api in [
            ApiKey::JoinGroup,
            ApiKey::SyncGroup,
            ApiKey::Heartbeat,
            ApiKey::LeaveGroup,
            ApiKey::OffsetDelete,
        ] {
            assert!(!valid_id(api, ""), "{api:?}");
            assert!(valid_id(api, "g"), "{api:?}");
        }
        for api in [
            ApiKey::OffsetCommit,
            ApiKey::OffsetFetch,
            ApiKey::DescribeGroups,
            ApiKey::DeleteGroups,
        ] {
            assert!(valid_id(api, ""), "{api:?}");
        }
    }
}
