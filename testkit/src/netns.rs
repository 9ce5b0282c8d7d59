//! Simulated machines for multi-host tests, made of Linux network namespaces.
//!
//! A [`Lab`] is one test run's private network: a *switch* namespace holding one bridge per
//! [`Network`], and one namespace per [`Host`], each joined to the networks it is on by a veth
//! pair (`eth0`, `eth1`, … inside the host). Addresses come from `10.231.X.0/24` (a free `X` per
//! run), one `/26` per network. The root namespace (where the test itself and its clients run)
//! can be attached to a network too, as one more machine on it. Programs run on a host through
//! `ip netns exec`; [`Lab::cut`] and [`Lab::heal`] take a host's link to one network down and up.
//!
//! Every name carries a random run id, so parallel runs never collide, and dropping the `Lab`
//! deletes everything it made, also when the test panics. Creating one needs root (or
//! `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`) and the `ip` tool: [`Lab::create`] says why it cannot.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Most networks in one lab (each takes a `/26` of the lab's `/24`).
const MAX_NETWORKS: usize = 4;
/// Most hosts on one network (addresses `.10` and up of its `/26`).
const MAX_HOSTS: usize = 50;

/// Why a lab could not be made (not root, no `ip`, no namespace support).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A network of the lab (a bridge in the switch namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(usize);

/// A simulated machine (a network namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host(usize);

struct HostEntry {
    name: String,
    namespace: String,
    /// `(network, root-side veth, address)` per link.
    links: Vec<(Network, String, Ipv4Addr)>,
}

/// One test run's namespaces, bridges and links; all deleted on drop.
pub struct Lab {
    id: String,
    subnet: u8,
    switch: String,
    networks: Vec<String>,
    hosts: Vec<HostEntry>,
    /// Root-side veths attaching the root namespace: `(network, veth, address)`.
    root_links: Vec<(Network, String, Ipv4Addr)>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.id)
            .field("subnet", &format_args!("10.231.{}.0/24", self.subnet))
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Makes the switch namespace of a new lab, or says why it cannot.
    pub fn create() -> Result<Lab, Unavailable> {
        let id = format!("{:04x}", rand::random::<u16>());
        let subnet = free_subnet()?;
        let lab = Lab {
            switch: format!("berth-{id}-sw"),
            id,
            subnet,
            networks: Vec::new(),
            hosts: Vec::new(),
            root_links: Vec::new(),
        };
        ip(&["netns", "add", &lab.switch]).map_err(Unavailable)?;
        ip(&["-n", &lab.switch, "link", "set", "lo", "up"]).map_err(Unavailable)?;
        Ok(lab)
    }

    /// A short run id, part of every name the lab makes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a network (a bridge in the switch namespace).
    pub fn network(&mut self) -> Network {
        assert!(self.networks.len() < MAX_NETWORKS, "too many networks");
        let net = Network(self.networks.len());
        let bridge = format!("br{}", net.0);
        self.run(&["-n", &self.switch, "link", "add", &bridge, "type", "bridge"]);
        self.run(&["-n", &self.switch, "link", "set", &bridge, "up"]);
        self.networks.push(bridge);
        net
    }

    /// Adds a host on `networks` (its links are `eth0`, `eth1`, … in that order).
    pub fn host(&mut self, name: &str, networks: &[Network]) -> Host {
        let host = Host(self.hosts.len());
        let namespace = format!("berth-{}-{name}", self.id);
        self.run(&["netns", "add", &namespace]);
        self.hosts.push(HostEntry {
            name: name.to_owned(),
            namespace: namespace.clone(),
            links: Vec::new(),
        });
        self.run(&["-n", &namespace, "link", "set", "lo", "up"]);
        for (i, &net) in networks.iter().enumerate() {
            let addr = self.next_address(net);
            let outer = format!("v{}h{}n{}", self.id, host.0, net.0);
            self.link(&namespace, &format!("eth{i}"), &outer, net, addr);
            self.hosts[host.0].links.push((net, outer, addr));
        }
        host
    }

    /// Attaches the root namespace (the test process) to `net`; returns its address there.
    pub fn attach_root(&mut self, net: Network) -> Ipv4Addr {
        let addr = self.next_address(net);
        let outer = format!("v{}r{}", self.id, net.0);
        let inner = format!("v{}rr{}", self.id, net.0);
        // The pair is made in the root namespace; one end moves to the switch.
        self.run(&[
            "link", "add", &inner, "type", "veth", "peer", "name", &outer,
        ]);
        self.run(&["link", "set", &outer, "netns", &self.switch]);
        self.plug(&outer, net);
        self.run(&["addr", "add", &format!("{addr}/26"), "dev", &inner]);
        self.run(&["link", "set", &inner, "up"]);
        self.root_links.push((net, outer, addr));
        addr
    }

    /// The host's address on `net`. Panics when it is not on it.
    pub fn addr(&self, host: Host, net: Network) -> Ipv4Addr {
        self.link_of(host, net).2
    }

    /// The namespace name of `host` (for `ip netns exec`).
    pub fn namespace(&self, host: Host) -> &str {
        &self.hosts[host.0].namespace
    }

    /// The name `host` was given.
    pub fn name(&self, host: Host) -> &str {
        &self.hosts[host.0].name
    }

    /// A command that runs `program` on `host`.
    pub fn command(
        &self,
        host: Host,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", self.namespace(host)])
            .arg(program)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Takes `host`'s link to `net` down (at the switch): nothing passes either way.
    pub fn cut(&self, host: Host, net: Network) {
        let outer = self.link_of(host, net).1.clone();
        self.run(&["-n", &self.switch, "link", "set", &outer, "down"]);
    }

    /// Brings `host`'s link to `net` back up.
    pub fn heal(&self, host: Host, net: Network) {
        let outer = self.link_of(host, net).1.clone();
        self.run(&["-n", &self.switch, "link", "set", &outer, "up"]);
    }

    fn link_of(&self, host: Host, net: Network) -> &(Network, String, Ipv4Addr) {
        self.hosts[host.0]
            .links
            .iter()
            .find(|(n, _, _)| *n == net)
            .unwrap_or_else(|| panic!("{} is not on network {}", self.name(host), net.0))
    }

    fn next_address(&self, net: Network) -> Ipv4Addr {
        let used = self
            .hosts
            .iter()
            .flat_map(|h| &h.links)
            .chain(&self.root_links)
            .filter(|(n, _, _)| *n == net)
            .count();
        assert!(used < MAX_HOSTS, "too many hosts on one network");
        Ipv4Addr::new(10, 231, self.subnet, (net.0 * 64 + 10 + used) as u8)
    }

    /// A veth pair between `namespace` (as `inner`, with `addr`) and the bridge of `net`.
    fn link(&self, namespace: &str, inner: &str, outer: &str, net: Network, addr: Ipv4Addr) {
        self.run(&[
            "-n",
            &self.switch,
            "link",
            "add",
            outer,
            "type",
            "veth",
            "peer",
            "name",
            inner,
            "netns",
            namespace,
        ]);
        self.plug(outer, net);
        let cidr = format!("{addr}/26");
        self.run(&["-n", namespace, "addr", "add", &cidr, "dev", inner]);
        self.run(&["-n", namespace, "link", "set", inner, "up"]);
    }

    /// Puts the switch-side veth `outer` on the bridge of `net`.
    fn plug(&self, outer: &str, net: Network) {
        let bridge = &self.networks[net.0];
        self.run(&["-n", &self.switch, "link", "set", outer, "master", bridge]);
        self.run(&["-n", &self.switch, "link", "set", outer, "up"]);
    }

    fn run(&self, args: &[&str]) {
        if let Err(e) = ip(args) {
            panic!("{e}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veths in it (and their peers), once no process is
        // left in it; the root's veths are deleted by name in case one lingers.
        for (net, _, _) in &self.root_links {
            let _ = ip(&["link", "del", &format!("v{}rr{}", self.id, net.0)]);
        }
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.namespace]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

/// A `10.231.X.0/24` that no address of the root namespace is in.
fn free_subnet() -> Result<u8, Unavailable> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map_err(|e| Unavailable(format!("cannot run `ip`: {e}")))?;
    let shown = String::from_utf8_lossy(&out.stdout);
    for _ in 0..64 {
        let x = rand::random_range(1..=254u8);
        if !shown.contains(&format!(" 10.231.{x}.")) {
            return Ok(x);
        }
    }
    Err(Unavailable("no free 10.231.X.0/24 subnet".into()))
}

/// Runs `ip ARGS`; the error says what failed and why.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
