//! Nodes on machines of their own, on one machine: a network namespace per node, each joined
//! to a bridge in the root namespace by a veth pair. Traffic between two nodes, or between a
//! node and this process, crosses two veth pairs and the bridge instead of loopback.
//!
//! Used by `tern bench --workload replicate --netns` and by the nemesis tests. Needs root and
//! the `ip` command (iproute2). Latency cannot be put on the veth pairs where the kernel has
//! no netem; put a [`super::link::Link`] listening on the bridge ([`Namespaces::bridge_addr`])
//! between two nodes instead.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;

/// One network namespace per node id, each joined to a bridge in the root namespace by a veth
/// pair; the bridge has an address of the nodes' subnet, so this process reaches every node as
/// a client would. Bridged traffic needs no IP forwarding, which stays as it is. Named after
/// a tag and this process: two runs at once do not meet. Everything is removed on drop, also
/// after a panic.
pub struct Namespaces {
    /// Up to 3 ASCII letters, in every name: `tern-<tag>-<pid>-<id>`, `t<tag><pid>v<id>`.
    tag: &'static str,
    pid: u32,
    /// The nodes are at 10.77.`subnet`.id, the bridge at .254.
    subnet: u8,
    ids: Vec<u64>,
}

impl Namespaces {
    /// Makes the namespaces, links and addresses of nodes `ids` (1 to 253); what fails is
    /// said. Namespaces and links left by processes with the same `tag` that are gone (killed
    /// before their drop ran) are removed first.
    ///
    /// # Errors
    /// Not root, a bad tag or id, no free subnet, or an `ip` command that failed.
    pub fn create(tag: &'static str, ids: &[u64]) -> Result<Namespaces, String> {
        if tag.is_empty() || tag.len() > 3 || !tag.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(format!("namespace tag {tag:?}: 1 to 3 lowercase letters"));
        }
        if ids.is_empty() || ids.iter().any(|id| !(1..254).contains(id)) {
            return Err(format!("node ids {ids:?}: 1 to 253, at least one"));
        }
        // SAFETY: geteuid only reads this process's credentials.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        remove_stale(tag);
        let pid = std::process::id();
        // Built first so that a failure half-way removes what was made.
        let net = Namespaces { tag, pid, subnet: free_subnet(pid)?, ids: ids.to_vec() };
        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", net.bridge_ip()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for &id in ids {
            let (namespace, veth) = (net.namespace(id), net.veth(id));
            ip(&["netns", "add", &namespace])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{}/24", net.ip(id)), "dev", "eth0"])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            // A node reaches its own address through the namespace's loopback.
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        // `ip netns exec` also needs a mount namespace of its own, which a container may refuse.
        ip(&["netns", "exec", &net.namespace(ids[0]), "true"])?;
        Ok(net)
    }

    /// The name of node `id`'s namespace, for `ip netns exec`.
    #[must_use]
    pub fn namespace(&self, id: u64) -> String {
        format!("tern-{}-{}-{id}", self.tag, self.pid)
    }

    /// Node `id`'s address (on its end of the veth pair).
    ///
    /// # Panics
    /// An id outside 1 to 253.
    #[must_use]
    pub fn ip(&self, id: u64) -> Ipv4Addr {
        let host = u8::try_from(id).ok().filter(|h| (1..254).contains(h)).expect("node ids 1 to 253");
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    /// Node `id`'s address with `port`.
    #[must_use]
    pub fn addr(&self, id: u64, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip(id), port))
    }

    /// The bridge's address in the root namespace, which every node reaches: where links
    /// between nodes listen.
    #[must_use]
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 254)
    }

    /// The bridge's address with `port`.
    #[must_use]
    pub fn bridge_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.bridge_ip(), port))
    }

    /// The root namespace's end of node `id`'s veth pair: its port on the bridge.
    fn veth(&self, id: u64) -> String {
        format!("t{}{}v{id}", self.tag, self.pid)
    }

    fn bridge(&self) -> String {
        format!("t{}{}b", self.tag, self.pid)
    }

    /// Runs `f` on a thread of its own inside node `id`'s namespace, and returns what it
    /// returns. Sockets made by `f`, and every thread it starts (and the threads they start),
    /// belong to that namespace for good; a socket may then be used from any thread.
    ///
    /// # Errors
    /// The namespace cannot be entered.
    pub fn run_in<T: Send>(&self, id: u64, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let path = format!("/var/run/netns/{}", self.namespace(id));
        std::thread::scope(|scope| {
            let entered = scope.spawn(move || -> io::Result<T> {
                let file = std::fs::File::open(&path)?;
                // SAFETY: setns moves only the calling thread, which is this one, into the
                // namespace the open descriptor names; it touches no memory of ours.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::other(format!(
                        "entering network namespace {path}: {}",
                        io::Error::last_os_error()
                    )));
                }
                Ok(f())
            });
            entered.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Node `id` reaches nobody and nobody reaches it: its packets are dropped, with no reset.
    ///
    /// # Panics
    /// The link cannot be set down.
    pub fn cut(&self, id: u64) {
        ip(&["link", "set", &self.veth(id), "down"]).expect("cut a node's link");
    }

    /// Undoes [`Namespaces::cut`].
    ///
    /// # Panics
    /// The link cannot be set up.
    pub fn heal(&self, id: u64) {
        ip(&["link", "set", &self.veth(id), "up"]).expect("heal a node's link");
    }

    /// Node `id` opens no TCP connection to `port`, refused at once; its other connections go
    /// on. An `ip rule` in its namespace (Linux 4.17 or later).
    ///
    /// # Errors
    /// The rule cannot be added.
    pub fn hold_port(&self, id: u64, port: u16) -> Result<(), String> {
        ip(&["-n", &self.namespace(id), "rule", "add", "ipproto", "tcp", "dport", &port.to_string(), "prohibit"])
    }

    /// Undoes [`Namespaces::hold_port`].
    ///
    /// # Panics
    /// The rule cannot be removed.
    pub fn release_port(&self, id: u64, port: u16) {
        ip(&["-n", &self.namespace(id), "rule", "del", "ipproto", "tcp", "dport", &port.to_string(), "prohibit"])
            .expect("release a node's connections to a port");
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a veth end deletes its pair; a namespace goes once nothing is left in it.
        for &id in &self.ids {
            let _ = ip(&["link", "del", &self.veth(id)]);
            let _ = ip(&["netns", "del", &self.namespace(id)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Runs `ip` with `args`; its error message when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
}

/// What `ip` prints for `args`, empty when it fails.
fn ip_output(args: &[&str]) -> String {
    Command::new("ip").args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// A 10.77.x.0/24 subnet no address or route of the root namespace is in, from the pid on.
fn free_subnet(pid: u32) -> Result<u8, String> {
    let taken = ip_output(&["-4", "-o", "addr", "show"]) + &ip_output(&["-4", "route", "show", "table", "all"]);
    (0..254u32)
        .map(|k| u8::try_from(pid.wrapping_add(k) % 254 + 1).expect("1 to 254"))
        .find(|x| !taken.split_whitespace().any(|word| word.starts_with(&format!("10.77.{x}."))))
        .ok_or_else(|| "no free 10.77.x.0/24 subnet".into())
}

/// Namespaces and links tagged `tag` of processes that are gone (killed before their drop ran).
fn remove_stale(tag: &str) {
    let gone = |name: &str, prefix: &str| {
        let pid: String = name.strip_prefix(prefix).unwrap_or("").chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    for line in ip_output(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if gone(name, &format!("tern-{tag}-")) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in ip_output(&["-o", "link", "show"]).lines() {
        // "7: tnem123v1@if2: <BROADCAST,...": the name is the second word, up to '@' or ':'.
        let name = line.split_whitespace().nth(1).unwrap_or("").split(['@', ':']).next().unwrap_or("");
        if gone(name, &format!("t{tag}")) {
            let _ = ip(&["link", "del", name]);
        }
    }
}
