//! Who may mount the export: IP networks parsed from `--clients`, kept from pgset's block in
//! /etc/exports, derived from the cluster's node addresses, or the host's primary network; `*`
//! only when asked for.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use pgset_spec::ClusterSpec;

use crate::{Error, ExportsFile, HostAddresses, Result};

/// An IP network in CIDR notation, normalized to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// The network of `addr` with `prefix` bits (host bits cleared); `None` when the prefix is
    /// too long for the address family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = match addr {
            IpAddr::V4(a) => {
                if prefix > 32 {
                    return None;
                }
                let mask = if prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix)
                };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                if prefix > 128 {
                    return None;
                }
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix)
                };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Some(Cidr { addr, prefix })
    }

    /// A single host (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Cidr::new(ip, self.prefix).is_some_and(|n| n.addr == self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        match prefix {
            None => Ok(Cidr::host(addr)),
            Some(p) => {
                let bits: u8 = p
                    .parse()
                    .map_err(|_| format!("prefix {p:?} is not a number"))?;
                Cidr::new(addr, bits).ok_or_else(|| {
                    format!(
                        "prefix /{bits} is too long for an IPv{} address",
                        if addr.is_ipv4() { 4 } else { 6 }
                    )
                })
            }
        }
    }
}

/// One client entry of the export line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExportClient {
    /// An IP network or host.
    Network(Cidr),
    /// Every host (`*`): only when given explicitly.
    Everyone,
}

impl ExportClient {
    /// Parses one client as `exportfs -v` prints it (`10.0.0.0/24`, `127.0.0.1`, `<world>`,
    /// `*`). `None` for host names, wildcards and netgroups, which pgset never writes.
    pub fn from_exportfs(s: &str) -> Option<ExportClient> {
        match s {
            "*" | "<world>" => Some(ExportClient::Everyone),
            _ => s.parse::<Cidr>().ok().map(ExportClient::Network),
        }
    }
}

impl fmt::Display for ExportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportClient::Network(c) => c.fmt(f),
            ExportClient::Everyone => f.write_str("*"),
        }
    }
}

/// Parses `--clients`: a comma-separated list of IP addresses and CIDR networks, or `*`.
/// The result is sorted and without duplicates.
pub fn parse_clients(list: &str) -> Result<Vec<ExportClient>> {
    let mut out = Vec::new();
    for raw in list.split(',') {
        let entry = raw.trim();
        let invalid = |problem: String| Error::InvalidClients {
            value: entry.to_string(),
            problem,
        };
        if entry.is_empty() {
            return Err(invalid("empty entry".into()));
        }
        if entry == "*" {
            out.push(ExportClient::Everyone);
            continue;
        }
        let cidr: Cidr = entry.parse().map_err(invalid)?;
        out.push(ExportClient::Network(cidr));
    }
    if out.contains(&ExportClient::Everyone) && out.len() > 1 {
        return Err(Error::InvalidClients {
            value: list.to_string(),
            problem: "`*` already allows every host; give it alone".into(),
        });
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The clients for the cluster's nodes: for each node address, the host's network that holds
/// it (the node network), else the address alone. Sorted, without duplicates.
pub fn clients_from_node_addresses(
    nodes: &[IpAddr],
    host_networks: &[(IpAddr, Cidr)],
) -> Vec<ExportClient> {
    let mut out: Vec<ExportClient> = nodes
        .iter()
        .map(|ip| {
            let net = host_networks
                .iter()
                .map(|(_, n)| *n)
                .find(|n| n.contains(*ip))
                .unwrap_or_else(|| Cidr::host(*ip));
            ExportClient::Network(net)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The clients already in pgset's block for this cluster's export in `exports` (the text of
/// /etc/exports), so a rerun without `--clients` (`up` again, `scale`) does not change who may
/// mount it. `None` without a file, without a block of this cluster, or with an empty one.
pub fn kept_clients(spec: &ClusterSpec, exports: Option<&str>) -> Option<Vec<ExportClient>> {
    let file = ExportsFile::parse(exports?, spec).ok()?;
    let clients = file.block_clients(&spec.cluster_export_dir().display().to_string());
    (!clients.is_empty()).then_some(clients)
}

/// The clients of a first run without `--clients`, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultClients {
    /// The networks of the cluster's nodes ([`clients_from_node_addresses`]).
    Nodes(Vec<ExportClient>),
    /// No cluster node known: this host's primary network.
    PrimaryNetwork(Cidr),
}

impl DefaultClients {
    /// The clients chosen.
    pub fn clients(&self) -> Vec<ExportClient> {
        match self {
            DefaultClients::Nodes(c) => c.clone(),
            DefaultClients::PrimaryNetwork(net) => vec![ExportClient::Network(*net)],
        }
    }

    /// What to tell the user when the choice fell back to the host's primary network.
    pub fn note(&self) -> Option<String> {
        match self {
            DefaultClients::Nodes(_) => None,
            DefaultClients::PrimaryNetwork(net) => Some(format!(
                "no cluster nodes known; allowing this host's primary network {net} (use --clients to choose)"
            )),
        }
    }
}

/// The clients for a first run without `--clients`: the cluster's node network, else this
/// host's primary network ([`DefaultClients::note`] says so); neither is [`Error::NoClients`].
pub fn default_clients(nodes: &[IpAddr], addresses: &HostAddresses) -> Result<DefaultClients> {
    if !nodes.is_empty() {
        return Ok(DefaultClients::Nodes(clients_from_node_addresses(
            nodes,
            &addresses.networks,
        )));
    }
    addresses
        .primary_network()
        .map(DefaultClients::PrimaryNetwork)
        .ok_or(Error::NoClients)
}

/// How the export is offered: to which clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// The clients, sorted, not empty.
    pub clients: Vec<ExportClient>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_lists_and_normalizes_networks() {
        let c = parse_clients("10.0.2.15/24, 127.0.0.1 ,192.168.56.11/32,10.0.2.0/24").unwrap();
        let shown: Vec<String> = c.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.2.0/24", "127.0.0.1/32", "192.168.56.11/32"]);
        assert_eq!(parse_clients("*").unwrap(), vec![ExportClient::Everyone]);
        assert_eq!(
            parse_clients("fd00::1/64").unwrap()[0].to_string(),
            "fd00::/64"
        );
    }

    #[test]
    fn rejects_what_does_not_parse() {
        for bad in [
            "",
            "10.0.0.0/33",
            "node1.example.com",
            "10.0.0.0/x",
            "10.0.0.0/24,,10.0.1.0/24",
            "*,10.0.0.0/8",
            "10.0.0.0/24 10.0.1.0/24",
        ] {
            let err = parse_clients(bad).unwrap_err().to_string();
            assert!(err.contains("--clients"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn node_addresses_become_the_host_network_or_themselves() {
        let nets = [(ip("192.168.56.10"), "192.168.56.0/24".parse().unwrap())];
        let c = clients_from_node_addresses(
            &[ip("192.168.56.11"), ip("192.168.56.12"), ip("10.9.8.7")],
            &nets,
        );
        let shown: Vec<String> = c.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.9.8.7/32", "192.168.56.0/24"]);
    }

    #[test]
    fn a_rerun_keeps_the_clients_of_pgsets_block() {
        let spec = ClusterSpec::default();
        let clients = parse_clients("10.0.2.0/24,127.0.0.1").unwrap();
        let file = format!("/srv/other *(ro)\n{}", crate::render_block(&spec, &clients));
        assert_eq!(kept_clients(&spec, Some(&file)), Some(clients.clone()));
        assert_eq!(kept_clients(&spec, Some("/srv/other *(ro)\n")), None);
        assert_eq!(kept_clients(&spec, None), None);
        let mut other = spec.clone();
        other.name = "other".into();
        assert_eq!(kept_clients(&other, Some(&file)), None);
        // The same name in another namespace is another cluster with its own block.
        let mut staging = spec.clone();
        staging.namespace = "staging".into();
        assert_eq!(kept_clients(&staging, Some(&file)), None);
        let star = parse_clients("*").unwrap();
        let both = format!("{file}{}", crate::render_block(&staging, &star));
        assert_eq!(kept_clients(&staging, Some(&both)), Some(star));
        assert_eq!(kept_clients(&spec, Some(&both)), Some(clients));
    }

    #[test]
    fn default_clients_are_the_node_network_else_the_primary_network_with_a_note() {
        let net: Cidr = "192.168.56.0/24".parse().unwrap();
        let addresses = HostAddresses {
            primary: Some(ip("10.0.2.15")),
            networks: vec![
                (ip("10.0.2.15"), "10.0.2.0/24".parse().unwrap()),
                (ip("192.168.56.10"), net),
            ],
        };
        let nodes = default_clients(&[ip("192.168.56.11")], &addresses).unwrap();
        assert_eq!(nodes.clients(), [ExportClient::Network(net)]);
        assert_eq!(nodes.note(), None);

        let primary = default_clients(&[], &addresses).unwrap();
        assert_eq!(primary.clients()[0].to_string(), "10.0.2.0/24");
        assert_eq!(
            primary.note().as_deref(),
            Some(
                "no cluster nodes known; allowing this host's primary network 10.0.2.0/24 (use --clients to choose)"
            )
        );

        let none = default_clients(&[], &HostAddresses::default()).unwrap_err();
        assert!(matches!(none, Error::NoClients), "{none}");
    }

    #[test]
    fn exportfs_client_forms() {
        assert_eq!(
            ExportClient::from_exportfs("<world>"),
            Some(ExportClient::Everyone)
        );
        assert_eq!(
            ExportClient::from_exportfs("127.0.0.1"),
            Some(ExportClient::Network(Cidr::host(ip("127.0.0.1"))))
        );
        assert_eq!(ExportClient::from_exportfs("*.example.com"), None);
    }
}
