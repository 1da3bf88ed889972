//! The ACL APIs at v0 (Kafka 0.11–1.x): CreateAcls, DescribeAcls and DeleteAcls before
//! KIP-290 added resource pattern types. A v0 request names literal resources only, so it
//! decodes into the v1 request with pattern type LITERAL (3), as Kafka reads it; a v0
//! response is v1's without the pattern type field, and lists literal bindings only (a
//! prefixed one cannot be expressed at v0, and a v0 filter matches only literal ones).
//! CreateAcls v0's response is v1's (`response_as`).
//!
//! Pure functions under `legacy`'s bounds checks; run on the connection's shard.

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{
    CreateAclsRequest, DeleteAclsRequest, DeleteAclsResponse, DescribeAclsRequest,
    DescribeAclsResponse,
};

use super::{put_len, put_nullable_str, put_str, Reader};
use crate::kafka::codec::CodecError;

/// Kafka's `PatternType.LITERAL`: the only pattern v0 knows.
const LITERAL: i8 = 3;

/// CreateAcls v0: each creation without `resource_pattern_type`.
pub(super) fn create_acls_v0(r: &mut Reader) -> Result<CreateAclsRequest, CodecError> {
    let creations = r.array(1 + 2 + 2 + 2 + 1 + 1, |r| {
        let resource_type = r.i8()?;
        let resource_name = r.string()?;
        let principal = r.string()?;
        let host = r.string()?;
        let operation = r.i8()?;
        let permission_type = r.i8()?;
        Ok(AclCreation::default()
            .with_resource_type(resource_type)
            .with_resource_name(resource_name)
            .with_resource_pattern_type(LITERAL)
            .with_principal(principal)
            .with_host(host)
            .with_operation(operation)
            .with_permission_type(permission_type))
    })?;
    Ok(CreateAclsRequest::default().with_creations(creations))
}

/// An ACL filter at v0 (DescribeAcls' request, each of DeleteAcls' filters): v1's without
/// `pattern_type_filter`, which v0 means as LITERAL. Decoded into DeleteAcls' filter type,
/// which has DescribeAcls' fields.
fn filter_v0(r: &mut Reader) -> Result<DeleteAclsFilter, CodecError> {
    let resource_type_filter = r.i8()?;
    let resource_name_filter = r.nullable_string()?;
    let principal_filter = r.nullable_string()?;
    let host_filter = r.nullable_string()?;
    let operation = r.i8()?;
    let permission_type = r.i8()?;
    Ok(DeleteAclsFilter::default()
        .with_resource_type_filter(resource_type_filter)
        .with_resource_name_filter(resource_name_filter)
        .with_pattern_type_filter(LITERAL)
        .with_principal_filter(principal_filter)
        .with_host_filter(host_filter)
        .with_operation(operation)
        .with_permission_type(permission_type))
}

/// DescribeAcls v0: one filter.
pub(super) fn describe_acls_v0(r: &mut Reader) -> Result<DescribeAclsRequest, CodecError> {
    let f = filter_v0(r)?;
    Ok(DescribeAclsRequest::default()
        .with_resource_type_filter(f.resource_type_filter)
        .with_resource_name_filter(f.resource_name_filter)
        .with_pattern_type_filter(f.pattern_type_filter)
        .with_principal_filter(f.principal_filter)
        .with_host_filter(f.host_filter)
        .with_operation(f.operation)
        .with_permission_type(f.permission_type))
}

/// DeleteAcls v0: filters.
pub(super) fn delete_acls_v0(r: &mut Reader) -> Result<DeleteAclsRequest, CodecError> {
    let filters = r.array(1 + 2 + 2 + 2 + 1 + 1, filter_v0)?;
    Ok(DeleteAclsRequest::default().with_filters(filters))
}

/// DescribeAcls v0's response: v1's without each resource's pattern type.
pub(super) fn describe_acls_response_v0(
    r: &DescribeAclsResponse,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    buf.put_i32(r.throttle_time_ms);
    buf.put_i16(r.error_code);
    put_nullable_str(buf, r.error_message.as_deref())?;
    let literal: Vec<_> = r
        .resources
        .iter()
        .filter(|res| res.pattern_type == LITERAL)
        .collect();
    put_len(buf, literal.len())?;
    for res in literal {
        buf.put_i8(res.resource_type);
        put_str(buf, &res.resource_name)?;
        put_len(buf, res.acls.len())?;
        for acl in &res.acls {
            put_str(buf, &acl.principal)?;
            put_str(buf, &acl.host)?;
            buf.put_i8(acl.operation);
            buf.put_i8(acl.permission_type);
        }
    }
    Ok(())
}

/// DeleteAcls v0's response: v1's without each matching binding's pattern type.
pub(super) fn delete_acls_response_v0(
    r: &DeleteAclsResponse,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    buf.put_i32(r.throttle_time_ms);
    put_len(buf, r.filter_results.len())?;
    for f in &r.filter_results {
        buf.put_i16(f.error_code);
        put_nullable_str(buf, f.error_message.as_deref())?;
        put_len(buf, f.matching_acls.len())?;
        for m in &f.matching_acls {
            buf.put_i16(m.error_code);
            put_nullable_str(buf, m.error_message.as_deref())?;
            buf.put_i8(m.resource_type);
            put_str(buf, &m.resource_name)?;
            put_str(buf, &m.principal)?;
            put_str(buf, &m.host)?;
            buf.put_i8(m.operation);
            buf.put_i8(m.permission_type);
        }
    }
    Ok(())
}

/// CreateAcls v0 request (tests and the fuzz corpus capture).
pub(super) fn encode_create_acls_v0(
    r: &CreateAclsRequest,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    put_len(buf, r.creations.len())?;
    for c in &r.creations {
        buf.put_i8(c.resource_type);
        put_str(buf, &c.resource_name)?;
        put_str(buf, &c.principal)?;
        put_str(buf, &c.host)?;
        buf.put_i8(c.operation);
        buf.put_i8(c.permission_type);
    }
    Ok(())
}

/// An ACL filter at v0 (the fields of `filter_v0`).
fn put_filter_v0(
    buf: &mut BytesMut,
    (resource_type, name, principal, host): (i8, Option<&str>, Option<&str>, Option<&str>),
    operation: i8,
    permission_type: i8,
) -> Result<(), CodecError> {
    buf.put_i8(resource_type);
    put_nullable_str(buf, name)?;
    put_nullable_str(buf, principal)?;
    put_nullable_str(buf, host)?;
    buf.put_i8(operation);
    buf.put_i8(permission_type);
    Ok(())
}

/// DescribeAcls v0 request.
pub(super) fn encode_describe_acls_v0(
    r: &DescribeAclsRequest,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    let resource = (
        r.resource_type_filter,
        r.resource_name_filter.as_deref(),
        r.principal_filter.as_deref(),
        r.host_filter.as_deref(),
    );
    put_filter_v0(buf, resource, r.operation, r.permission_type)
}

/// DeleteAcls v0 request.
pub(super) fn encode_delete_acls_v0(
    r: &DeleteAclsRequest,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    put_len(buf, r.filters.len())?;
    for f in &r.filters {
        let resource = (
            f.resource_type_filter,
            f.resource_name_filter.as_deref(),
            f.principal_filter.as_deref(),
            f.host_filter.as_deref(),
        );
        put_filter_v0(buf, resource, f.operation, f.permission_type)?;
    }
    Ok(())
}
