//! The Kafka Java client's default partitioner for a keyed record (`Utils.murmur2`,
//! `toPositive`, modulo the partition count), which librdkafka offers as `murmur2` and
//! `murmur2_random`: the REST produce endpoint places keyed records with it, and a super
//! stream routes AMQP publishes by routing key with it, so both land where a Kafka
//! producer with that key would. Pure; any shard.

/// Kafka's `Utils.murmur2`: MurmurHash2, 32 bits, seed `0x9747b28c`, the tail bytes
/// mixed in little-endian order, as the Java client (and librdkafka's `murmur2`
/// partitioners) compute it.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= (*b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`: `toPositive(murmur2(key)) % partitions`,
/// the Java client's default partitioner for a non-null key.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 1 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's `Utils.murmur2` written out as the Java source states it, on `i32` with
    /// Java's wrapping arithmetic and `>>>`, to check the implementation above against.
    fn java_murmur2(data: &[u8]) -> i32 {
        let length = data.len() as i32;
        let m: i32 = 0x5bd1e995;
        let r = 24;
        let mut h: i32 = (0x9747b28c_u32 as i32) ^ length;
        let length4 = length / 4;
        let b = |i: i32| (data[i as usize] as i32) & 0xff;
        for i in 0..length4 {
            let i4 = i * 4;
            let mut k: i32 = b(i4) + (b(i4 + 1) << 8) + (b(i4 + 2) << 16) + (b(i4 + 3) << 24);
            k = k.wrapping_mul(m);
            k ^= ((k as u32) >> r) as i32;
            k = k.wrapping_mul(m);
            h = h.wrapping_mul(m);
            h ^= k;
        }
        let base = length & !3;
        let rem = length % 4;
        if rem == 3 {
            h ^= b(base + 2) << 16;
        }
        if rem >= 2 {
            h ^= b(base + 1) << 8;
        }
        if rem >= 1 {
            h ^= b(base);
            h = h.wrapping_mul(m);
        }
        h ^= ((h as u32) >> 13) as i32;
        h = h.wrapping_mul(m);
        h ^= ((h as u32) >> 15) as i32;
        h
    }

    #[test]
    fn murmur2_matches_kafka() {
        // The values Kafka's own UtilsTest.testMurmur2 checks.
        let known: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (k, want) in known {
            assert_eq!(murmur2(k), *want, "{}", String::from_utf8_lossy(k));
            assert_eq!(java_murmur2(k), *want);
        }
        // Every tail length, high bytes (Java's signed bytes masked with 0xff).
        let mut data = Vec::new();
        for i in 0..40u8 {
            assert_eq!(murmur2(&data), java_murmur2(&data), "len {}", data.len());
            data.push(i.wrapping_mul(37).wrapping_add(200));
        }
    }

    #[test]
    fn partitions_are_positive_modulo() {
        for key in [&b""[..], b"a", b"21", b"foobar", b"\xff\xfe"] {
            for n in 1..12 {
                let p = partition_for(key, n);
                assert!((0..n).contains(&p));
                assert_eq!(p, ((murmur2(key) & 0x7fffffff) % n.max(1)));
            }
        }
        // -973932308 & 0x7fffffff = 1173551340; % 3 = 0.
        assert_eq!(partition_for(b"21", 3), 1173551340 % 3);
    }
}
