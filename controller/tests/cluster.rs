//! Controller members over real TCP on loopback, each with its Raft log in a Tern log on disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tern_controller::{ClusterMap, Command, Controller, ControllerConfig, ElectReason, MembershipChange, Reply};

const TIMEOUT: Duration = Duration::from_secs(20);

/// Free loopback addresses, one per member.
fn addresses(count: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..count).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect()
}

fn voters(addrs: &[String]) -> BTreeMap<u64, String> {
    addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect()
}

fn start(dir: &Path, id: u64, voters: &BTreeMap<u64, String>) -> Controller {
    let config = ControllerConfig::new(id, dir.join(format!("node{id}")), voters[&id].clone(), voters.clone());
    Controller::start(config).expect("controller member starts")
}

fn cluster(dir: &Path, count: usize) -> (BTreeMap<u64, String>, Vec<Controller>) {
    let voters = voters(&addresses(count));
    let members = voters.keys().map(|id| start(dir, *id, &voters)).collect();
    (voters, members)
}

/// Three members that created log "orders": their addresses, the controller's leader, and the
/// members by id.
fn three_with_orders(dir: &Path) -> (BTreeMap<u64, String>, u64, BTreeMap<u64, Controller>) {
    let (voters, members) = cluster(dir, 3);
    create_orders(&members[0]);
    let leader = members[0].wait_for_leader(TIMEOUT).unwrap();
    (voters, leader, members.into_iter().map(|m| (m.node_id(), m)).collect())
}

fn create_orders(member: &Controller) {
    let create = Command::CreateLog { log: "orders".into(), replicas: vec![1, 2, 3], quorum: 2, leader: 1 };
    assert_eq!(member.propose(create, TIMEOUT).unwrap(), Reply::Leader { log: "orders".into(), leader: 1, epoch: 1 });
}

/// Waits until every member has applied the same map as `want`.
fn converged(members: &[&Controller], want: &ClusterMap) {
    let deadline = Instant::now() + TIMEOUT;
    for member in members {
        while member.local_map() != *want {
            assert!(Instant::now() < deadline, "member {} never applied {want:?}", member.node_id());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn three_members_form_one_controller_and_agree_on_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let (_, members) = cluster(dir.path(), 3);
    let leader = members[0].wait_for_leader(TIMEOUT).expect("a controller leader is elected");
    assert!((1..=3).contains(&leader));
    // Proposed at a member that may not lead: forwarded to the leader.
    let follower = members.iter().find(|m| m.node_id() != leader).unwrap();
    create_orders(follower);
    let map = follower.read_map(TIMEOUT).unwrap();
    assert_eq!(map.logs["orders"].epoch, 1);
    converged(&members.iter().collect::<Vec<_>>(), &map);
    let status = members[2].status();
    assert_eq!(status.voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(status.leader, Some(leader));
}

/// Three members race to elect leaders of one log, each from the epoch it last saw: every epoch
/// is issued once, names one leader, and every member ends with the same map.
#[test]
fn racing_elections_issue_every_epoch_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, members) = cluster(dir.path(), 3);
    create_orders(&members[0]);
    let created = members[0].read_map(TIMEOUT).unwrap();
    converged(&members.iter().collect::<Vec<_>>(), &created);
    let wins: Vec<Vec<(u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|member| {
                s.spawn(move || {
                    let mut wins = Vec::new();
                    for round in 0..30u64 {
                        let seen = member.local_map().logs["orders"].epoch;
                        let leader = 1 + (member.node_id() + round) % 3;
                        let elect = Command::Elect {
                            log: "orders".into(),
                            expected_epoch: seen,
                            leader,
                            reason: ElectReason::Failover,
                        };
                        match member.propose(elect, TIMEOUT).unwrap() {
                            Reply::Leader { epoch, leader: who, .. } => {
                                assert_eq!((epoch, who), (seen + 1, leader));
                                wins.push((epoch, who));
                            }
                            Reply::Conflict { epoch, .. } => assert!(epoch > seen, "conflict at {epoch} from {seen}"),
                            other => panic!("{other:?}"),
                        }
                    }
                    wins
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut issued: BTreeMap<u64, u64> = BTreeMap::new();
    for (epoch, leader) in wins.into_iter().flatten() {
        assert!(issued.insert(epoch, leader).is_none(), "epoch {epoch} issued twice");
    }
    let map = members[1].read_map(TIMEOUT).unwrap();
    let last = *issued.keys().next_back().expect("some election won");
    assert_eq!(map.logs["orders"].epoch, last);
    assert_eq!(map.logs["orders"].leader, issued[&last]);
    assert_eq!(issued.keys().copied().collect::<Vec<_>>(), (2..=last).collect::<Vec<_>>(), "no epoch skipped");
    converged(&members.iter().collect::<Vec<_>>(), &map);
}

/// The controller's leader stops: the other two elect a new one and go on committing; the old
/// leader, restarted on its own directory, rejoins from its own state and catches up.
#[test]
fn the_controller_outlives_its_leader_and_a_restarted_member_rejoins_from_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let (voters, old, mut members) = three_with_orders(dir.path());
    members.remove(&old).unwrap().shutdown();
    let survivor = members.values().next().unwrap();
    let elect = Command::Elect { log: "orders".into(), expected_epoch: 1, leader: 2, reason: ElectReason::Failover };
    assert_eq!(survivor.propose(elect, TIMEOUT).unwrap(), Reply::Leader { log: "orders".into(), leader: 2, epoch: 2 });
    let new = survivor.wait_for_leader(TIMEOUT).unwrap();
    assert_ne!(new, old, "a stopped member cannot lead");
    let map = survivor.read_map(TIMEOUT).unwrap();
    let restarted = start(dir.path(), old, &voters);
    converged(&[&restarted], &map);
    assert_eq!(restarted.local_map().logs["orders"].epoch, 2);
}

/// A leader left alone (the other two members stopped) cannot commit: a proposal, a read of
/// the map and a change of members at it each give up at their timeout instead of waiting for
/// a quorum for good (a node's loop that proposed there once never stopped).
#[test]
fn a_leader_left_alone_gives_up_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leader, mut members) = three_with_orders(dir.path());
    let alone = members.remove(&leader).unwrap();
    for (_, member) in members {
        member.shutdown();
    }
    let (done, answers) = std::sync::mpsc::channel();
    let asking = std::thread::spawn(move || {
        let short = Duration::from_millis(500);
        let elect =
            Command::Elect { log: "orders".into(), expected_epoch: 1, leader: 2, reason: ElectReason::Failover };
        let proposed = alone.propose(elect, short).map(|_| ());
        let read = alone.read_map(short).map(|_| ());
        let changed = alone.change_members(MembershipChange::Remove { nodes: vec![3] }, short);
        done.send([proposed, read, changed]).unwrap();
    });
    let results = answers.recv_timeout(TIMEOUT).expect("each call gives up at its timeout");
    asking.join().unwrap();
    for result in results {
        let e = result.expect_err("nothing commits without a quorum");
        assert!(e.to_string().contains("within 500 ms"), "{e}");
    }
}

/// A fourth node joins as a learner (it receives the map without voting), is promoted to a
/// voter, and then the first node is removed and stopped: the three that remain, one of them the
/// newcomer, go on committing.
#[test]
fn members_are_added_promoted_and_removed_by_joint_consensus() {
    let dir = tempfile::tempdir().unwrap();
    let (voters, members) = cluster(dir.path(), 3);
    create_orders(&members[0]);
    let addr4 = addresses(1).remove(0);
    // Started with the founding voters' list, of which it is not one: it waits to be added.
    let config = ControllerConfig::new(4, dir.path().join("node4"), addr4.clone(), voters.clone());
    let newcomer = Controller::start(config).unwrap();
    members[1].change_members(MembershipChange::AddLearner { node: 4, addr: addr4 }, TIMEOUT).unwrap();
    let map = members[0].read_map(TIMEOUT).unwrap();
    converged(&[&newcomer], &map);
    assert_eq!(members[0].status().learners, vec![4]);
    members[2].change_members(MembershipChange::Promote { nodes: vec![4] }, TIMEOUT).unwrap();
    assert_eq!(members[0].status().voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    newcomer.change_members(MembershipChange::Remove { nodes: vec![1] }, TIMEOUT).unwrap();
    let mut members = members.into_iter();
    members.next().unwrap().shutdown();
    let rest: Vec<Controller> = members.collect();
    let elect = Command::Elect { log: "orders".into(), expected_epoch: 1, leader: 3, reason: ElectReason::Failover };
    assert_eq!(newcomer.propose(elect, TIMEOUT).unwrap(), Reply::Leader { log: "orders".into(), leader: 3, epoch: 2 });
    assert_eq!(newcomer.status().voters.keys().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
    let map = rest[0].read_map(TIMEOUT).unwrap();
    converged(&[&newcomer, &rest[1]], &map);
}

/// A member that restarts (here the old leader, right after it was replaced) rejoins without
/// deposing the healthy leader: the term and the leader stay as they are while it catches up.
/// Without care it campaigns (a higher term, no pre-vote) or misses the leader's heartbeats
/// while the leader waits to dial it again, and the leader it answers steps down.
#[test]
fn a_restarted_member_does_not_depose_a_healthy_leader() {
    let dir = tempfile::tempdir().unwrap();
    let (voters, members) = cluster(dir.path(), 3);
    let mut members: BTreeMap<u64, Controller> = members.into_iter().map(|m| (m.node_id(), m)).collect();
    for round in 0..3 {
        let any = members.values().next().unwrap();
        let old = any.wait_for_leader(TIMEOUT).unwrap();
        members.remove(&old).unwrap().shutdown();
        let survivor = members.values().next().unwrap();
        let new = loop {
            match survivor.wait_for_leader(TIMEOUT).unwrap() {
                leader if leader != old => break leader,
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let term = members[&new].status().term;
        members.insert(old, start(dir.path(), old, &voters));
        let watched = Instant::now();
        while watched.elapsed() < Duration::from_secs(2) {
            let status = members[&new].status();
            assert_eq!(
                (status.leader, status.term),
                (Some(new), term),
                "round {round}: member {old} restarted and the leader changed after {} ms",
                watched.elapsed().as_millis()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A data leader's heartbeat is kept by every member, not only the controller's leader: a
/// member that becomes the leader knows at once how long each data leader has been silent.
#[test]
fn every_member_keeps_a_data_leaders_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let (_, members) = cluster(dir.path(), 3);
    let leader = members[0].wait_for_leader(TIMEOUT).unwrap();
    let data_leader = members.iter().find(|m| m.node_id() != leader).unwrap();
    let leads: std::collections::BTreeMap<String, u64> = [("*".to_owned(), 7), ("orders".to_owned(), 3)].into();
    data_leader.heartbeat(&leads, TIMEOUT).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    for member in &members {
        while member.last_heartbeat(data_leader.node_id()).map(|(led, _)| led) != Some(leads.clone()) {
            assert!(Instant::now() < deadline, "member {} never kept the heartbeat", member.node_id());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
