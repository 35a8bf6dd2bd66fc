//! A network in CIDR notation (`10.244.0.0/16`, `::1/128`) as pg_hba's address column takes it:
//! parsed, checked (a prefix within the address's length, no host bits set) and written back
//! the same way, so what a spec names is what pg_hba admits.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network: an address with its host bits clear and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a text is not a network, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a network: {problem}")]
pub struct CidrError {
    /// The text given.
    pub text: String,
    /// What is wrong and what to write instead.
    pub problem: String,
}

impl Cidr {
    /// IPv4 loopback, `127.0.0.1/32`.
    pub const LOOPBACK_V4: Cidr = Cidr {
        addr: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        prefix: 32,
    };
    /// IPv6 loopback, `::1/128`.
    pub const LOOPBACK_V6: Cidr = Cidr {
        addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        prefix: 128,
    };

    /// Both loopback addresses: where a port-forward's connections and a member's own come from.
    pub fn loopback() -> Vec<Cidr> {
        vec![Cidr::LOOPBACK_V4, Cidr::LOOPBACK_V6]
    }

    /// The network's address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix)))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let bad = |problem: String| CidrError {
            text: text.to_string(),
            problem,
        };
        let (addr, prefix) = text.trim().split_once('/').ok_or_else(|| {
            bad("no prefix length; write it as address/prefix, e.g. `10.244.0.0/16` or `192.0.2.7/32`".into())
        })?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad(format!("`{addr}` is not an IPv4 or IPv6 address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| {
            bad(format!(
                "the prefix length must be a number from 0 to {max}"
            ))
        })?;
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(u32::from(a), prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(u128::from(a), prefix).into()),
        };
        if network != addr {
            return Err(bad(format!(
                "host bits are set after the /{prefix} prefix; write `{network}/{prefix}`"
            )));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_print_back_and_contain_their_addresses() {
        for text in [
            "10.244.0.0/16",
            "127.0.0.1/32",
            "::1/128",
            "fd00::/8",
            "0.0.0.0/0",
        ] {
            let c: Cidr = text.parse().unwrap();
            assert_eq!(c.to_string(), text);
        }
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(c.contains("10.244.3.7".parse().unwrap()));
        assert!(!c.contains("10.245.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert!(Cidr::LOOPBACK_V4.contains("127.0.0.1".parse().unwrap()));
        assert!(!Cidr::LOOPBACK_V4.contains("127.0.0.2".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn bad_networks_say_what_to_write() {
        let e = "10.244.1.0/16".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("write `10.244.0.0/16`"), "{e}");
        let e = "10.244.0.0".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("no prefix length"), "{e}");
        let e = "10.244.0.0/33".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("0 to 32"), "{e}");
        let e = "pods/16".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("not an IPv4 or IPv6 address"), "{e}");
    }
}
