//! The one list of Kafka APIs this broker serves. Adding an API is a row here and its
//! handler file, `handlers/<module>.rs` (with its `pub mod` line in `handlers/mod.rs`,
//! where rustfmt can see it; the build fails without it). Everything else is generated
//! from the rows:
//!
//! - `codec`: the accepted versions (`codec::versions`), the decoded `codec::Request`, its
//!   decoder (`decode_request`, which the fuzz tests drive) and its encoder;
//! - `handlers`: `SUPPORTED` (what ApiVersions lists, in the rows' order), the API names
//!   of the metric labels, and the dispatch match.
//!
//! Pure data, no shard: compiled into the codec the fuzz target uses as well.

/// Calls `$m!` with one row per served API, in the order ApiVersions lists them:
///
/// `(key, request type, response type, min ..= max, handler module, call)`
///
/// - `key`: the `ApiKey` variant; also the API's name in metric labels.
/// - request and response types: in `kafka_protocol::messages`.
/// - `min ..= max`: the versions accepted and advertised. They must lie within
///   kafka-protocol's table of the versions a Kafka broker accepts and within what its
///   request and response codecs implement (the table runs ahead of the codecs for a few
///   APIs: OffsetCommit and OffsetFetch v10, InitProducerId v6 in 0.18); the codec's
///   `every_listed_version_has_codecs` test checks both.
/// - `call`, how `handlers::dispatch` runs the handler (all return a `Pending`):
///   - `staged`: `async fn handle(conn, request, correlation_id, version)`, awaited before
///     the connection reads its next request, so what it does before returning its
///     `Pending` happens in request order: the in-flight Produce path (its appends);
///   - `conn`: `fn handle(conn, request, correlation_id, version)`;
///   - `bare`: `fn handle(request, correlation_id, version)`, for an API that touches
///     neither connection nor shard;
///   - `client_id`: `fn handle(conn, request, client_id, correlation_id, version)`, given
///     the request header's client id as well.
macro_rules! kafka_apis {
    ($m:ident) => {
        $m! {
            (Produce, ProduceRequest, ProduceResponse, 0..=13, produce, staged),
            (Fetch, FetchRequest, FetchResponse, 0..=18, fetch, conn),
            (ListOffsets, ListOffsetsRequest, ListOffsetsResponse, 0..=10, list_offsets, conn),
            (Metadata, MetadataRequest, MetadataResponse, 0..=13, metadata, conn),
            (FindCoordinator, FindCoordinatorRequest, FindCoordinatorResponse, 0..=6, find_coordinator, conn),
            (JoinGroup, JoinGroupRequest, JoinGroupResponse, 0..=9, join_group, client_id),
            (Heartbeat, HeartbeatRequest, HeartbeatResponse, 0..=4, heartbeat, conn),
            (LeaveGroup, LeaveGroupRequest, LeaveGroupResponse, 0..=5, leave_group, conn),
            (SyncGroup, SyncGroupRequest, SyncGroupResponse, 0..=5, sync_group, conn),
            (OffsetCommit, OffsetCommitRequest, OffsetCommitResponse, 0..=9, offset_commit, conn),
            (OffsetFetch, OffsetFetchRequest, OffsetFetchResponse, 0..=9, offset_fetch, conn),
            (ListGroups, ListGroupsRequest, ListGroupsResponse, 0..=5, list_groups, conn),
            (DescribeGroups, DescribeGroupsRequest, DescribeGroupsResponse, 0..=6, describe_groups, conn),
            (DeleteGroups, DeleteGroupsRequest, DeleteGroupsResponse, 0..=2, delete_groups, conn),
            (OffsetDelete, OffsetDeleteRequest, OffsetDeleteResponse, 0..=0, offset_delete, conn),
            (ConsumerGroupHeartbeat, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, 0..=1, consumer_group_heartbeat, client_id),
            (ConsumerGroupDescribe, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, 0..=1, consumer_group_describe, conn),
            (InitProducerId, InitProducerIdRequest, InitProducerIdResponse, 0..=5, init_producer_id, conn),
            (AddPartitionsToTxn, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, 0..=5, add_partitions_to_txn, conn),
            (AddOffsetsToTxn, AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, 0..=4, add_offsets_to_txn, conn),
            (EndTxn, EndTxnRequest, EndTxnResponse, 0..=4, end_txn, conn),
            (TxnOffsetCommit, TxnOffsetCommitRequest, TxnOffsetCommitResponse, 0..=4, txn_offset_commit, conn),
            (DescribeTransactions, DescribeTransactionsRequest, DescribeTransactionsResponse, 0..=0, describe_transactions, conn),
            (ListTransactions, ListTransactionsRequest, ListTransactionsResponse, 0..=2, list_transactions, conn),
            (DescribeConfigs, DescribeConfigsRequest, DescribeConfigsResponse, 0..=4, describe_configs, conn),
            (AlterConfigs, AlterConfigsRequest, AlterConfigsResponse, 0..=2, alter_configs, conn),
            (IncrementalAlterConfigs, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, 0..=1, incremental_alter_configs, conn),
            (DescribeCluster, DescribeClusterRequest, DescribeClusterResponse, 0..=2, describe_cluster, conn),
            (DescribeLogDirs, DescribeLogDirsRequest, DescribeLogDirsResponse, 0..=4, describe_log_dirs, conn),
            (DeleteRecords, DeleteRecordsRequest, DeleteRecordsResponse, 0..=2, delete_records, conn),
            (OffsetForLeaderEpoch, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, 0..=4, offset_for_leader_epoch, conn),
            (DescribeProducers, DescribeProducersRequest, DescribeProducersResponse, 0..=0, describe_producers, conn),
            (WriteTxnMarkers, WriteTxnMarkersRequest, WriteTxnMarkersResponse, 1..=1, write_txn_markers, conn),
            (ApiVersions, ApiVersionsRequest, ApiVersionsResponse, 0..=4, api_versions, bare),
            (CreateTopics, CreateTopicsRequest, CreateTopicsResponse, 0..=7, create_topics, conn),
            (DeleteTopics, DeleteTopicsRequest, DeleteTopicsResponse, 0..=6, delete_topics, conn),
            (CreatePartitions, CreatePartitionsRequest, CreatePartitionsResponse, 0..=3, create_partitions, conn),
            (DescribeAcls, DescribeAclsRequest, DescribeAclsResponse, 0..=3, describe_acls, conn),
            (CreateAcls, CreateAclsRequest, CreateAclsResponse, 0..=3, create_acls, conn),
            (DeleteAcls, DeleteAclsRequest, DeleteAclsResponse, 0..=3, delete_acls, conn),
            (SaslHandshake, SaslHandshakeRequest, SaslHandshakeResponse, 0..=1, sasl_handshake, conn),
            (SaslAuthenticate, SaslAuthenticateRequest, SaslAuthenticateResponse, 0..=2, sasl_authenticate, conn),
            (DescribeUserScramCredentials, DescribeUserScramCredentialsRequest, DescribeUserScramCredentialsResponse, 0..=0, describe_user_scram_credentials, conn),
            (AlterUserScramCredentials, AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, 0..=0, alter_user_scram_credentials, conn),
        }
    };
}
pub(crate) use kafka_apis;
