//! Replication slots and retention, on three-node clusters in this process: retention never
//! deletes what a follower still needs (within its lag bound); a leader restarted knows where
//! its followers stood; a follower that fell behind retention is re-seeded with a copy of what
//! the leader retains, or, with re-seeding off, stops with a typed data-loss error. Nothing
//! ever skips records silently.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tern_replication::driver::{Client, Error, LogMetrics, Role, Server, ServerConfig};

mod common;
use common::any_port;

const LOG: &str = "events";
const SEGMENT_BYTES: u64 = 64 << 10;
const RETENTION_BYTES: u64 = 256 << 10;

struct Options {
    slot_lag_bytes_max: Option<u64>,
    reseed: bool,
}

fn node(dir: &Path, id: u64, role: Role, peers: Vec<(u64, SocketAddr)>, listen: SocketAddr, o: &Options) -> Server {
    let engine = tern::Config {
        segment_size_bytes: SEGMENT_BYTES,
        index_interval_bytes: 4 << 10,
        retention_bytes: Some(RETENTION_BYTES),
        ..tern::Config::default()
    };
    let config = ServerConfig {
        commit_timeout: Duration::from_secs(5),
        slot_lag_bytes_max: o.slot_lag_bytes_max,
        reseed: o.reseed,
        ..common::config(0x5107, id, role, peers, listen)
    };
    common::start(dir, engine, config)
}

/// Waits up to 20 s.
fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    common::eventually(what, Duration::from_secs(20), f)
}

fn metrics(server: &Server) -> LogMetrics {
    common::log_metrics(server, LOG)
}

/// Appends `batches` batches of 16 records of 1 KiB, each acknowledged on a quorum; returns
/// the end.
fn write(client: &mut Client, batches: usize, tag: u64) -> u64 {
    let mut end = 0;
    for b in 0..batches {
        let records = (0..16)
            .map(|i| {
                let mut record = format!("{tag}-{b}-{i}-").into_bytes();
                record.resize(1024, b'.');
                Bytes::from(record)
            })
            .collect();
        end = client.append(LOG, records, true).expect("quorum append").1;
    }
    end
}

/// The records a node holds from `from` on (uncommitted included), with the offset of the
/// first: a node's own retention may have moved its start past `from`.
fn records(addr: SocketAddr, from: u64) -> (u64, Vec<Bytes>) {
    let mut client = Client::connect(addr).unwrap();
    loop {
        let (mut first, mut out, mut next) = (None::<u64>, Vec::new(), from);
        let dense = loop {
            let (start, _, batch) = client.read_from(LOG, next, 10_000, true).unwrap();
            if batch.is_empty() {
                break true;
            }
            if first.is_some() && start != next {
                break false; // retention moved the start while reading: read again
            }
            first.get_or_insert(start);
            next = start + batch.len() as u64;
            out.extend(batch);
        };
        if dense {
            return (first.unwrap_or(next), out);
        }
    }
}

/// Whether two nodes hold the same records where both still hold them.
fn same_records(a: SocketAddr, b: SocketAddr, from: u64) {
    let ((start_a, a), (start_b, b)) = (records(a, from), records(b, from));
    let start = start_a.max(start_b);
    let (a, b) = (&a[(start - start_a) as usize..], &b[(start - start_b) as usize..]);
    assert_eq!(a.len(), b.len(), "the two nodes end at different offsets");
    assert!(!a.is_empty(), "nothing left to compare");
    assert_eq!(a, b, "the two nodes differ from offset {start}");
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    leader: Option<Server>,
    followers: Vec<Option<Server>>,
    addrs: Vec<SocketAddr>,
}

fn cluster(o: &Options) -> Cluster {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let f2 = node(dirs[1].path(), 2, Role::Follower, vec![], any_port(), o);
    let f3 = node(dirs[2].path(), 3, Role::Follower, vec![], any_port(), o);
    let peers = vec![(2, f2.local_addr()), (3, f3.local_addr())];
    let leader = node(dirs[0].path(), 1, Role::Leader, peers, any_port(), o);
    let addrs = vec![leader.local_addr(), f2.local_addr(), f3.local_addr()];
    Cluster { dirs, leader: Some(leader), followers: vec![Some(f2), Some(f3)], addrs }
}

impl Cluster {
    fn leader(&self) -> &Server {
        self.leader.as_ref().unwrap()
    }

    fn restart_follower(&mut self, i: usize, o: &Options) {
        let id = i as u64 + 2;
        self.followers[i] = Some(node(self.dirs[i + 1].path(), id, Role::Follower, vec![], self.addrs[i + 1], o));
    }
}

#[test]
fn retention_waits_for_a_lagging_follower_and_a_restarted_leader_remembers_its_followers() {
    let o = Options { slot_lag_bytes_max: None, reseed: true };
    let mut c = cluster(&o);
    let mut client = Client::connect(c.addrs[0]).unwrap();
    write(&mut client, 8, 0);
    eventually("node 3 to sync the first records", || {
        let p = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3)?;
        (p.acked_durable >= 128).then_some(())
    });
    // Node 3 goes away; far more than the retention size is written without it.
    c.followers[1].take().unwrap().stop();
    let held = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3).unwrap().acked_durable;
    let end = write(&mut client, 64, 1);
    // Retention runs (node 2 keeps up, so segments before node 3's end may go), but never
    // past what node 3 acknowledged.
    eventually("retention to delete the segments nobody needs", || {
        let m = metrics(c.leader());
        (m.start_offset > 0).then_some(())
    });
    let m = metrics(c.leader());
    assert!(m.start_offset <= held, "retention deleted records node 3 still needs: start {} > {held}", m.start_offset);
    let kept = m.start_offset;

    // Node 3 returns and catches up from its own end: nothing was missing.
    c.restart_follower(1, &o);
    eventually("node 3 to catch up", || {
        let p = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3)?;
        (p.acked_durable >= end).then_some(())
    });
    assert_eq!(metrics(c.followers[1].as_ref().unwrap()).gap, None, "no re-seed was needed");
    same_records(c.addrs[2], c.addrs[0], kept);
    // A follower's own retention runs as well, held at the commit point it learned (above
    // it, records may still have to be cut back if the leader lost them).
    let node2 = eventually("node 2's own retention to run", || {
        let m = metrics(c.followers[0].as_ref()?);
        (m.start_offset > 0).then_some(m)
    });
    assert!(node2.start_offset <= node2.commit_end, "node 2 deleted past its commit point: {node2:?}");

    // Once both are caught up the hold lifts, and retention goes on.
    eventually("retention to resume once node 3 caught up", || (metrics(c.leader()).start_offset > kept).then_some(()));

    // The leader restarts while both followers are down: from its replication slots it knows
    // the commit point at once, before any follower is back.
    let commit = metrics(c.leader()).commit_end;
    for f in &mut c.followers {
        f.take().unwrap().stop();
    }
    c.leader.take().unwrap().stop();
    let peers = vec![(2, c.addrs[1]), (3, c.addrs[2])];
    let leader = node(c.dirs[0].path(), 1, Role::Leader, peers, c.addrs[0], &o);
    assert_eq!(metrics(&leader).commit_end, commit, "the restarted leader lost track of its followers");
    leader.stop();
}

#[test]
fn a_follower_behind_retention_is_reseeded_with_what_the_leader_retains() {
    let o = Options { slot_lag_bytes_max: Some(128 << 10), reseed: true };
    let mut c = cluster(&o);
    let mut client = Client::connect(c.addrs[0]).unwrap();
    write(&mut client, 4, 0);
    eventually("node 3 to sync the first records", || {
        let p = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3)?;
        (p.acked_durable >= 64).then_some(())
    });
    c.followers[1].take().unwrap().stop();
    let end = write(&mut client, 64, 1);
    // Node 3 is over its lag bound: retention stops waiting for it.
    let held = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3).unwrap().acked_durable;
    eventually("retention to pass node 3's end", || (metrics(c.leader()).start_offset > held).then_some(()));

    c.restart_follower(1, &o);
    eventually("node 3 to be re-seeded and catch up", || {
        let p = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3)?;
        (p.reseeds == 1 && p.gap.is_none() && p.acked_durable >= end).then_some(())
    });
    let f3 = metrics(c.followers[1].as_ref().unwrap());
    let (from, to, reseeded) = f3.gap.expect("node 3 reports its re-seed");
    assert!(reseeded && from == held && to > held, "{:?}", f3.gap);
    // Node 3's log starts where the re-seed put it, and holds exactly what the leader holds
    // from there on.
    assert!(f3.start_offset >= to, "node 3 starts at {} before the re-seed point {to}", f3.start_offset);
    same_records(c.addrs[2], c.addrs[0], to);
    assert!(c.followers[1].as_ref().unwrap().data_losses().is_empty());
}

#[test]
fn with_reseeding_off_a_follower_behind_retention_stops_with_a_data_loss_error() {
    let o = Options { slot_lag_bytes_max: Some(128 << 10), reseed: false };
    let mut c = cluster(&o);
    let mut client = Client::connect(c.addrs[0]).unwrap();
    write(&mut client, 4, 0);
    eventually("node 3 to sync the first records", || {
        let p = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3)?;
        (p.acked_durable >= 64).then_some(())
    });
    c.followers[1].take().unwrap().stop();
    write(&mut client, 64, 1);
    let held = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3).unwrap().acked_durable;
    eventually("retention to pass node 3's end", || (metrics(c.leader()).start_offset > held).then_some(()));
    let start = metrics(c.leader()).start_offset;

    c.restart_follower(1, &o);
    let f3 = c.followers[1].as_ref().unwrap();
    let losses = eventually("node 3 to report the data loss", || {
        let losses = f3.data_losses();
        (!losses.is_empty()).then_some(losses)
    });
    match &losses[..] {
        [Error::DataLoss { log, from, to }] => {
            assert_eq!((log.as_str(), *from), (LOG, held));
            assert!(*to >= start, "{losses:?}");
        }
        other => panic!("expected one data loss, got {other:?}"),
    }
    // Nothing was skipped: node 3 still ends where it stopped, and the leader reports it.
    assert_eq!(metrics(f3).written_end, held);
    let p = metrics(c.leader()).peers.into_iter().find(|p| p.node == 3).unwrap();
    assert!(p.gap.is_some() && p.reseeds == 0, "{p:?}");
}

/// With every follower let go (beyond the lag bound) and none of them up, nothing new commits:
/// the leader's retention must still stop at the commit point, or records that exist on no
/// other node would be deleted, and a follower re-seeded past them would later move the commit
/// point over records that no node holds.
#[test]
fn retention_never_passes_the_commit_point_even_with_every_follower_let_go() {
    let o = Options { slot_lag_bytes_max: Some(1), reseed: true };
    let mut c = cluster(&o);
    let mut client = Client::connect(c.leader().local_addr()).unwrap();
    let committed = write(&mut client, 4, 1);
    c.followers = vec![None, None];
    for b in 0..64 {
        let records: Vec<Bytes> = (0..16).map(|i| Bytes::from(vec![b'x'; 1000 + i])).collect();
        client
            .append_acks(LOG, records, tern_replication::message::Acks::Leader)
            .unwrap_or_else(|e| panic!("{b}: {e}"));
    }
    let m = metrics(c.leader());
    assert!(m.written_end > committed + 1000 && m.commit_end < m.written_end, "{m:?}");
    // Maintenance runs every second; let it run a few times.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        let m = metrics(c.leader());
        assert!(m.start_offset <= m.commit_end, "retention deleted uncommitted records: {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
