//! Connections that a node drops: every one closes its socket for good.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use tern_replication::driver::Role;

mod common;
use common::any_port;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// Connections that send garbage are dropped by the node; their descriptors must not stay
/// open (six rounds of two hundred once reached `ulimit -n` and the node refused everyone).
#[test]
fn garbage_connections_leave_no_descriptor_open() {
    let dir = tempfile::tempdir().unwrap();
    let node =
        common::start(dir.path(), tern::Config::default(), common::config(0xfd, 1, Role::Leader, vec![], any_port()));
    let at = node.local_addr();
    // Warm up: threads and files the node opens once.
    drop(TcpStream::connect(at).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let before = open_descriptors();
    let mut noise = vec![0u8; 256 << 10];
    let mut x: u32 = 0x9e37_79b9;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    for _ in 0..3 {
        let conns: Vec<TcpStream> = (0..10)
            .map(|_| {
                let mut c = TcpStream::connect(at).unwrap();
                c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = c.write_all(&noise);
                c
            })
            .collect();
        drop(conns);
    }
    common::eventually("the node to close every garbage connection", Duration::from_secs(10), || {
        (open_descriptors() <= before + 2).then_some(())
    });
}
