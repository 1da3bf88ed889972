//! Fuzzes the Kafka request edge: the size prefix check, header decoding and the body
//! decoder of every API the broker serves. Any input must give a value or an error, never
//! a panic. Run with `cargo fuzz run kafka_request` from `fuzz/` (nightly), or build it on
//! stable with `cargo build --manifest-path fuzz/Cargo.toml`.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::*;
use libfuzzer_sys::fuzz_target;
use portask::kafka::codec::{decode_body, decode_frame, frame_len};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = frame_len([data[0], data[1], data[2], data[3]], 100 << 20);
    }
    let Ok(frame) = decode_frame(Bytes::copy_from_slice(data)) else {
        return;
    };
    let (v, b) = (frame.version, frame.body);
    let _ = match frame.api {
        ApiKey::Produce => decode_body::<ProduceRequest>("p", b, v).map(drop),
        ApiKey::Fetch => decode_body::<FetchRequest>("f", b, v).map(drop),
        ApiKey::ListOffsets => decode_body::<ListOffsetsRequest>("l", b, v).map(drop),
        ApiKey::Metadata => decode_body::<MetadataRequest>("m", b, v).map(drop),
        ApiKey::ApiVersions => decode_body::<ApiVersionsRequest>("a", b, v).map(drop),
        ApiKey::CreateTopics => decode_body::<CreateTopicsRequest>("c", b, v).map(drop),
        ApiKey::DeleteTopics => decode_body::<DeleteTopicsRequest>("d", b, v).map(drop),
        ApiKey::CreatePartitions => decode_body::<CreatePartitionsRequest>("cp", b, v).map(drop),
        ApiKey::FindCoordinator => decode_body::<FindCoordinatorRequest>("fc", b, v).map(drop),
        _ => Ok(()),
    };
    // Record batches inside a produce request are parsed by the owner shard.
    let _ = portask::storage::batch::split(&Bytes::copy_from_slice(data));
});
