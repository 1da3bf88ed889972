//! Why the delivery path writes its frames by hand: `cargo bench --bench amqp_codec`
//! times encoding one delivery (basic.deliver + content header + a 16 B body) with
//! amq-protocol's `gen_frame` (properties decoded at publish, re-encoded per delivery)
//! against `portask::amqp::codec` (property bytes copied verbatim).

use std::hint::black_box;
use std::time::Instant;

use amq_protocol::frame::{gen_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::basic::{self, gen_properties, AMQPProperties};
use amq_protocol::protocol::AMQPClass;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{Bytes, BytesMut};
use portask::amqp::codec;

fn main() {
    let mut headers = FieldTable::default();
    headers.insert("trace-id".into(), AMQPValue::LongString("abc-123".into()));
    let props = AMQPProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    let raw = Bytes::from(
        gen_properties(&props)(Vec::new().into())
            .expect("props")
            .into_inner()
            .0,
    );
    let body = Bytes::from_static(b"0123456789abcdef");
    const N: u64 = 1_000_000;

    let start = Instant::now();
    let mut out = BytesMut::with_capacity(1 << 20);
    for tag in 0..N {
        let frames = [
            AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                    consumer_tag: "amq.ctag-s0-abcdefgh".into(),
                    delivery_tag: tag,
                    redelivered: false,
                    exchange: "orders".into(),
                    routing_key: "order.created".into(),
                })),
            ),
            AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties: props.clone(),
                },
            ),
            AMQPFrame::Body(1, body.to_vec()),
        ];
        for f in &frames {
            let v = gen_frame(f)(Vec::new().into())
                .expect("encode")
                .into_inner()
                .0;
            out.extend_from_slice(&v);
        }
        if out.len() > 1 << 19 {
            black_box(&out);
            out.clear();
        }
    }
    let generic = start.elapsed();

    let start = Instant::now();
    for tag in 0..N {
        codec::put_deliver(
            &mut out,
            1,
            b"amq.ctag-s0-abcdefgh",
            tag,
            false,
            b"orders",
            b"order.created",
        );
        codec::put_content(&mut out, 1, &raw, &body, 131_072);
        if out.len() > 1 << 19 {
            black_box(&out);
            out.clear();
        }
    }
    let direct = start.elapsed();
    println!(
        "encode one delivery (deliver + header + 16 B body): amq-protocol {:.0} ns, hand-written {:.0} ns",
        generic.as_nanos() as f64 / N as f64,
        direct.as_nanos() as f64 / N as f64
    );
}
