//! Co-partitioning (spec §12): a player's state lives in the store of partition
//! `murmur2(player id as text) mod N` (Kafka's default partitioner, as a Java producer keying
//! events by player id places them), whichever of the two topics the player's events arrive on.
//! An event of the events topic already on that partition is evaluated where it is; any other
//! (keyless, keyed by something else, or placed by another partitioner) is forwarded to the
//! repartition topic's partition of that number, as Kafka Streams repartitions, and its stateful
//! campaigns are evaluated there. Both topics have N partitions, and the consumer group assigns
//! partition `p` of both to the same member (the range assignor).

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, librdkafka's `murmur2` partitioner).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition whose store holds `player`'s state, of `partitions`.
pub fn state_partition(player: &str, partitions: i32) -> i32 {
    ((murmur2(player.as_bytes()) & 0x7fff_ffff) % partitions.max(1)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ];
        for (text, want) in cases {
            assert_eq!(murmur2(text.as_bytes()), want, "{text}");
        }
        for p in 0..1000 {
            let part = state_partition(&p.to_string(), 4);
            assert!((0..4).contains(&part));
        }
    }
}
