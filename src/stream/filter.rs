//! Stream filtering (RabbitMQ 3.13's `x-stream-filter`): a consumer of a stream queue
//! names the filter values it wants (consumer argument `x-stream-filter`, a string or an
//! array of strings) and whether it also wants records that carry none
//! (`x-stream-match-unfiltered`, default false). A record's filter value is the message
//! header `x-stream-filter-value` an AMQP publisher set (kept in the record as the Kafka
//! header `amqp-header-x-stream-filter-value`), or the Kafka header
//! `x-stream-filter-value` a Kafka producer set.
//!
//! Unlike RabbitMQ's per-chunk Bloom filter, the match is exact, per record: the reader
//! skips records that do not match before they cost a delivery or credit.
//!
//! Pure; arguments are parsed on the consumer's connection shard, records matched on the
//! queue's owner shard (`queue::read`).

use amq_protocol::types::{AMQPValue, FieldTable};

use super::record::StoredRecord;

/// The message header (and Kafka header) holding a record's filter value.
pub const VALUE: &str = "x-stream-filter-value";
/// The consumer argument naming the values wanted.
pub const FILTER: &str = "x-stream-filter";
/// The consumer argument asking for records without a value too.
pub const MATCH_UNFILTERED: &str = "x-stream-match-unfiltered";

/// What a filtering consumer wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub values: Vec<Vec<u8>>,
    pub match_unfiltered: bool,
}

fn text(v: &AMQPValue) -> Option<Vec<u8>> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        AMQPValue::ByteArray(b) => Some(b.as_slice().to_vec()),
        _ => None,
    }
}

/// The consumer's filter from its arguments: None when it gives no `x-stream-filter`;
/// Err(406 text) for a filter that is not a string or an array of strings, or a
/// `x-stream-match-unfiltered` that is not a boolean.
pub fn parse(args: &FieldTable) -> Result<Option<Filter>, String> {
    let bad = |what: &str| format!("PRECONDITION_FAILED - invalid consumer argument {what}");
    let match_unfiltered = match args.inner().get(MATCH_UNFILTERED) {
        None => false,
        Some(AMQPValue::Boolean(b)) => *b,
        Some(_) => return Err(bad(&format!("'{MATCH_UNFILTERED}': must be a boolean"))),
    };
    let values = match args.inner().get(FILTER) {
        None => return Ok(None),
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(text)
            .collect::<Option<Vec<_>>>()
            .filter(|v| !v.is_empty()),
        Some(v) => text(v).map(|v| vec![v]),
    };
    let Some(values) = values else {
        return Err(bad(&format!(
            "'{FILTER}': must be a string or a non-empty array of strings"
        )));
    };
    Ok(Some(Filter {
        values,
        match_unfiltered,
    }))
}

/// The Kafka header an AMQP publisher's filter value is kept in (`record::HEADER_PREFIX`
/// and `VALUE`).
const AMQP_VALUE: &str = "amqp-header-x-stream-filter-value";

/// A record's filter value, whichever protocol wrote it.
pub fn value_of(r: &StoredRecord) -> Option<&[u8]> {
    r.header(AMQP_VALUE).or_else(|| r.header(VALUE)).flatten()
}

impl Filter {
    /// Whether the consumer gets record `r`.
    pub fn matches(&self, r: &StoredRecord) -> bool {
        match value_of(r) {
            Some(v) => self.values.iter().any(|w| w.as_slice() == v),
            None => self.match_unfiltered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::record::HEADER_PREFIX;
    use amq_protocol::types::FieldArray;

    fn rec(headers: &[(&str, &str)]) -> StoredRecord {
        let headers: Vec<(&[u8], Option<&[u8]>)> = headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes())))
            .collect();
        StoredRecord::new(0, -1, None, None, &headers)
    }

    #[test]
    fn the_amqp_header_name_is_the_prefix_and_the_value_name() {
        assert_eq!(AMQP_VALUE, format!("{HEADER_PREFIX}{VALUE}"));
    }

    fn args(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(k.into(), v);
        }
        t
    }

    #[test]
    fn arguments_as_rabbitmq_takes_them() {
        assert_eq!(parse(&FieldTable::default()), Ok(None));
        let one = parse(&args(vec![(FILTER, AMQPValue::LongString("a".into()))])).unwrap();
        assert_eq!(one.unwrap().values, vec![b"a".to_vec()]);
        let arr = FieldArray::from(vec![
            AMQPValue::LongString("a".into()),
            AMQPValue::LongString("b".into()),
        ]);
        let two = parse(&args(vec![
            (FILTER, AMQPValue::FieldArray(arr)),
            (MATCH_UNFILTERED, AMQPValue::Boolean(true)),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(two.values.len(), 2);
        assert!(two.match_unfiltered);
        for bad in [
            args(vec![(FILTER, AMQPValue::LongInt(1))]),
            args(vec![(FILTER, AMQPValue::FieldArray(FieldArray::default()))]),
            args(vec![(
                FILTER,
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(true)])),
            )]),
            args(vec![
                (FILTER, AMQPValue::LongString("a".into())),
                (MATCH_UNFILTERED, AMQPValue::LongString("yes".into())),
            ]),
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_per_record_from_either_protocol() {
        let f = Filter {
            values: vec![b"a".to_vec()],
            match_unfiltered: false,
        };
        assert!(f.matches(&rec(&[("amqp-header-x-stream-filter-value", "a")])));
        assert!(f.matches(&rec(&[("x-stream-filter-value", "a")])));
        assert!(!f.matches(&rec(&[("x-stream-filter-value", "b")])));
        assert!(!f.matches(&rec(&[])));
        let f = Filter {
            match_unfiltered: true,
            ..f
        };
        assert!(f.matches(&rec(&[])));
        assert!(!f.matches(&rec(&[("x-stream-filter-value", "b")])));
    }
}
