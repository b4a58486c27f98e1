//! Scratch directories, loopback ports and local addresses for agents.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates `constellation-test-<tag>-<pid>-<n>`.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "constellation-test-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        Scratch(dir)
    }

    /// `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a file atomically (write, then rename), as an operator's tooling should.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &p)) {
            panic!("cannot write {}: {e}", p.display());
        }
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port free for both TCP and UDP right now, for an agent to bind later.
///
/// Ports come from below the kernel's ephemeral range (32768+), walked by a per-process
/// counter from a per-process base, so a backend binding port 0 in a parallel test is
/// never handed a port given out here between the check and the agent's bind.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 10) * 1_200;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 1_200) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

static RESERVED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn reserve(port: u16) -> bool {
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    reserved.get_or_insert_with(HashSet::new).insert(port)
}

/// A [`free_port`] that no other caller in this process was given.
pub fn take_port() -> u16 {
    loop {
        let p = free_port();
        if reserve(p) {
            return p;
        }
    }
}

/// A cluster port `p` whose `p + 1` (an agent's Raft port) is free and reserved too.
pub fn take_cluster_port() -> u16 {
    loop {
        let p = take_port();
        if p == u16::MAX || std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_err() {
            continue;
        }
        if reserve(p + 1) {
            return p;
        }
    }
}

/// A loopback address nothing listens on.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// An IPv4 address of this machine that is not loopback (e.g. eth0's), to connect from:
/// a request from it to `127.0.0.1` reaches a loopback listener with a non-loopback
/// peer address. The address the kernel would send from towards TEST-NET-1 (no packet
/// is sent), else the first one `ip -4 -o addr` lists.
///
/// # Panics
/// When the machine has no such address.
pub fn non_loopback_ip() -> IpAddr {
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.255:9").and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    if let Some(ip) = routed {
        return ip;
    }
    let listed = std::process::Command::new("ip").args(["-4", "-o", "addr", "show"]).output();
    let text = listed.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok())
        .find(|ip| !ip.is_loopback())
        .unwrap_or_else(|| panic!("this test needs a non-loopback IPv4 address on the machine; `ip -4 addr`:\n{text}"))
}
