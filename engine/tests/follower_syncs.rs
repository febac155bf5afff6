//! A follower syncs small amounts on its connection's reader (one ack says both where the log
//! is written and where it is durable) and hands large ones to its syncer thread (applying
//! goes on while it syncs): both paths run, and both keep what they acknowledged.

use std::time::Duration;

use bytes::Bytes;
use tern_replication::driver::Client;
use tern_replication::message::Acks;

mod common;

#[test]
fn small_chunks_are_synced_by_the_reader_and_large_ones_by_the_syncer() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (leader, follower) = common::leader_and_follower(&dirs, 0x5c);
    let mut client = Client::connect(leader.local_addr()).unwrap();
    for i in 0..20 {
        client.append_acks("orders", vec![Bytes::from(format!("small-{i}"))], Acks::Quorum).unwrap();
    }
    let small = common::log_metrics(&follower, "orders");
    assert!(small.follower_inline_syncs > 0, "no small chunk was synced by the reader: {small:?}");
    // Incompressible: what counts is what arrives on the wire.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = || {
        let bytes: Vec<u8> = (0..512 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Bytes::from(bytes)
    };
    let large: Vec<Bytes> = (0..8).map(|_| noise()).collect();
    for _ in 0..4 {
        client.append_acks("orders", large.clone(), Acks::Quorum).unwrap();
    }
    let after = common::log_metrics(&follower, "orders");
    let by_syncer = after.follower_syncs - after.follower_inline_syncs;
    let before = small.follower_syncs - small.follower_inline_syncs;
    assert!(by_syncer > before, "no large chunk was synced by the syncer: {after:?}");
    // What was acknowledged at quorum is durable on the follower.
    let end = common::eventually("the follower's durable end", Duration::from_secs(10), || {
        let m = common::log_metrics(&follower, "orders");
        (m.durable_end >= 20 + 32).then_some(m.durable_end)
    });
    assert_eq!(end, 20 + 32);
}
