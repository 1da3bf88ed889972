//! The entry points of the fuzz targets: one input in, decoded the way the broker decodes
//! it, nothing out. Shared by the in-process fuzz tests (`fuzz-tests/tests/fuzz/main.rs`) and the
//! cargo-fuzz targets (`fuzz/fuzz_targets/*.rs` include this file), so both exercise the
//! same paths. Any input must return; a panic or an unbounded allocation is a bug.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use portask::amqp::{codec as amqp_codec, message};
use portask::kafka::codec::{self as kafka_codec, Request};

/// One Kafka request frame, without its size prefix, as `kafka::server` reads it.
pub fn kafka_request(data: &[u8]) {
    if data.len() >= 4 {
        let _ = kafka_codec::frame_len([data[0], data[1], data[2], data[3]], 100 << 20);
    }
    let _ = kafka_codec::correlation_id(data);
    let Ok(frame) = kafka_codec::decode_frame(Bytes::copy_from_slice(data)) else {
        return;
    };
    let Ok(request) = kafka_codec::decode_request(frame.api, frame.body, frame.version) else {
        return;
    };
    // The owner shard splits and checks each partition's record batches.
    if let Request::Produce(produce) = request {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                let Some(records) = &partition.records else {
                    continue;
                };
                let _ = portask::storage::batch::BatchHeader::parse(records);
                let _ = portask::storage::batch::record_count(records);
                if let Ok(batches) = portask::storage::batch::split(records) {
                    for (header, batch) in &batches {
                        let _ = portask::storage::batch::create_time_max(batch, header);
                    }
                }
            }
        }
    }
}

/// Bytes an AMQP client sends after its protocol header: frames, their methods (with the
/// nesting check before amq-protocol parses tables), content headers and properties.
pub fn amqp_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = amqp_codec::take_frame(&mut buf, 131_072) {
        match frame.kind {
            amqp_codec::FRAME_METHOD => {
                let (class, method) = amqp_codec::method_ids(&frame.payload);
                let _ = amqp_codec::method_name(class, method);
                let _ = amqp_codec::decode_method(&frame.payload);
                let _ = amqp_codec::decode_publish(&frame.payload);
            }
            amqp_codec::FRAME_HEADER => {
                if let Some(header) = amqp_codec::decode_content_header(&frame.payload) {
                    if let Some(view) = message::scan_properties(&header.properties) {
                        if let Some(table) = view.headers {
                            let _ = message::decode_headers(table);
                        }
                    }
                    let _ = message::parse_props(&header.properties);
                }
            }
            _ => {}
        }
    }
}

/// Bytes an HTTP client sends on one connection, read by hyper as the broker configures it,
/// each request's head taken apart by the router and its body read within the limit.
pub fn http_requests(data: &[u8]) {
    let config = portask::config::Config::default();
    let max_body = config.http.max_body_bytes;
    let users = portask::security::users::UserStore::build(&config, &Default::default());
    let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
        let (config, users) = (&config, &users);
        async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let _ = portask::http::head(config, users, &parts, None);
            let _ = http_body_util::Limited::new(body, max_body).collect().await;
            Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                Bytes::from_static(b"{}"),
            )))
        }
    });
    let conn = portask::http::http1(&config.http).serve_connection(Memory(data), service);
    let _ = futures::executor::block_on(conn);
}

/// A connection whose peer sent `data` and then closed; what is written back is dropped.
struct Memory<'a>(&'a [u8]);

impl hyper::rt::Read for Memory<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.0.len().min(buf.remaining());
        buf.put_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Memory<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The SASL exchanges a client drives before it has authenticated, on every SASL listener
/// and AMQP connection: the first byte picks one, the second splits the rest into two
/// client messages. SCRAM (RFC 5802: client-first, then client-final against a fixed
/// credential; both SHA-256 and SHA-512), PLAIN (`authzid \0 user \0 password`) and
/// AMQPLAIN (a field table).
pub fn sasl_tokens(data: &[u8]) {
    use portask::security::scram::{Mechanism, ServerExchange};
    let [selector, split, rest @ ..] = data else {
        return;
    };
    let cut = (*split as usize).min(rest.len());
    let (first, last) = rest.split_at(cut);
    match selector % 4 {
        0 | 1 => {
            let mechanism = if selector % 4 == 0 {
                Mechanism::Sha256
            } else {
                Mechanism::Sha512
            };
            // PBKDF2 once per mechanism, not per input: the credential is fixed.
            thread_local! {
                static CREDENTIALS: [portask::catalog::security::ScramCredential; 2] = [
                    Mechanism::Sha256.credential("pencil", b"fuzz-salt", 4096),
                    Mechanism::Sha512.credential("pencil", b"fuzz-salt", 4096),
                ];
            }
            let credential = CREDENTIALS.with(|c| c[usize::from(selector % 4)].clone());
            let started = ServerExchange::start(mechanism, first, |_| Some(credential), "srv");
            if let Ok((exchange, _server_first)) = started {
                let _ = exchange.finish(last);
            }
        }
        2 => {
            let _ = portask::amqp::auth::parse_plain(rest);
        }
        _ => {
            let _ = portask::amqp::auth::parse_amqplain(rest);
        }
    }
}

/// A stream queue's read of its log: the first byte is the offset to read from, the rest
/// record batches as a Fetch answer or a log read holds them, decoded by
/// `stream::record::records_within` (every codec, inflation bounded at 1 MiB), each record
/// mapped to an AMQP delivery (with and without `x-stream-offset`), and a record's value
/// taken as an AMQP message's property bytes and mapped to a Kafka record.
pub fn stream_records(data: &[u8]) {
    use portask::stream::record;
    let [from, rest @ ..] = data else {
        return;
    };
    let batches = Bytes::copy_from_slice(rest);
    let mut budget = 1 << 20;
    let Ok(decoded) = record::records_within(&batches, i64::from(*from), &mut budget, 1 << 20)
    else {
        return;
    };
    for r in &decoded.records {
        let d = record::stream_delivery_of(r);
        assert!(
            message::scan_properties(&d.properties).is_some(),
            "a delivery's properties must be well formed"
        );
        assert!(d.exchange.len() <= 255 && d.routing_key.len() <= 255);
        // The parts a reader's records are framed from are the delivery's.
        let p = r.parts();
        assert_eq!(
            (p.exchange, p.routing_key),
            (&d.exchange[..], &d.routing_key[..])
        );
        assert_eq!(p.body, &d.body[..]);
        let msg = message::Message::new(message::MessageData {
            parts: message::Parts::apart(
                d.exchange,
                d.routing_key,
                r.value_bytes().unwrap_or_default(),
                d.body,
            ),
            persistent: false,
            priority: 0,
            expiration: None,
        });
        let _ = record::record_of(&msg, record::KeyFrom::RoutingKey, r.timestamp);
    }
}
