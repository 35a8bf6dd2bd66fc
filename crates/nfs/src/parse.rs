//! Parsers of real tool output: `/etc/os-release`, `getenforce`, `getsebool`,
//! `systemctl is-enabled`, `dpkg-query`, `rpm -q`, `exportfs -v`, `firewall-cmd`, `ip`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::clients::{Cidr, ExportClient};
use crate::facts::{OsRelease, SelinuxMode, UnitFileState};

/// Parses `/etc/os-release` (shell-style `KEY=value`, values optionally quoted).
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(raw.trim());
        match key.trim() {
            "ID" => os.id = value,
            "ID_LIKE" => os.id_like = value.split_whitespace().map(String::from).collect(),
            "VERSION_ID" => os.version_id = value,
            "PRETTY_NAME" => os.pretty_name = value,
            _ => {}
        }
    }
    os
}

fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        return v[1..v.len() - 1].to_string();
    }
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(n @ ('"' | '\\' | '$' | '`')) => out.push(n),
                    Some(n) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        return out;
    }
    v.to_string()
}

/// Parses `getenforce` output.
pub fn parse_getenforce(text: &str) -> Option<SelinuxMode> {
    match text.trim() {
        "Enforcing" => Some(SelinuxMode::Enforcing),
        "Permissive" => Some(SelinuxMode::Permissive),
        "Disabled" => Some(SelinuxMode::Disabled),
        _ => None,
    }
}

/// Parses one `getsebool NAME` line: `virt_use_nfs --> on`.
pub fn parse_getsebool(text: &str) -> Option<(String, bool)> {
    let line = text.lines().find(|l| l.contains("-->"))?;
    let (name, value) = line.split_once("-->")?;
    let value = match value.trim() {
        "on" => true,
        "off" => false,
        _ => return None,
    };
    Some((name.trim().to_string(), value))
}

/// Parses the standard output of `systemctl is-enabled UNIT`. Older systemd prints nothing on
/// stdout for a unit that does not exist (the message goes to stderr).
pub fn parse_unit_file_state(stdout: &str) -> UnitFileState {
    match stdout.lines().next().map(str::trim).unwrap_or("") {
        "enabled" | "enabled-runtime" | "alias" | "indirect" | "generated" | "linked"
        | "linked-runtime" => UnitFileState::Enabled,
        "static" => UnitFileState::Static,
        "disabled" => UnitFileState::Disabled,
        "masked" | "masked-runtime" => UnitFileState::Masked,
        "" | "not-found" => UnitFileState::NotFound,
        other => UnitFileState::Other(other.to_string()),
    }
}

/// Parses `dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' PKG...`: a package is
/// installed when its status starts with `ii` (or `hi`, held).
pub fn parse_dpkg_query(text: &str) -> BTreeMap<String, bool> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let status = it.next().unwrap_or("");
            Some((
                name.split(':').next().unwrap_or(name).to_string(),
                status.starts_with("ii") || status.starts_with("hi"),
            ))
        })
        .collect()
}

/// Parses `rpm -q --qf '%{NAME}\n' PKG...` for the packages asked about: installed ones are
/// printed by name, missing ones as `package NAME is not installed`.
pub fn parse_rpm_query(text: &str, asked: &[&str]) -> BTreeMap<String, bool> {
    asked
        .iter()
        .map(|p| (p.to_string(), text.lines().any(|l| l.trim() == *p)))
        .collect()
}

/// One line of `exportfs -v`: a path exported to one client with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveExport {
    /// The exported path.
    pub path: PathBuf,
    /// The client as printed (`10.0.2.0/24`, `<world>`, a host name...).
    pub client: String,
    /// The options, in order.
    pub options: Vec<String>,
}

impl ActiveExport {
    /// The client, when it is an address, a network or everyone.
    pub fn parsed_client(&self) -> Option<ExportClient> {
        ExportClient::from_exportfs(&self.client)
    }

    /// Whether the options give what PostgreSQL on NFS needs: read-write, synchronous,
    /// root squashed, no subtree checking.
    pub fn has_pgset_options(&self) -> bool {
        let has = |o: &str| self.options.iter().any(|x| x == o);
        has("rw")
            && !has("async")
            && has("root_squash")
            && !has("no_root_squash")
            && !has("subtree_check")
            && !has("all_squash")
    }
}

/// Parses `exportfs -v`. A path longer than 14 characters is printed alone, with its client on
/// the next, indented line.
pub fn parse_exportfs_verbose(text: &str) -> Vec<ActiveExport> {
    let mut out = Vec::new();
    let mut pending_path: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let starts_indented = line.starts_with(char::is_whitespace);
        let mut words = line.split_whitespace();
        let (path, client_field) = if starts_indented {
            match pending_path.take() {
                Some(p) => (p, words.next()),
                None => continue,
            }
        } else {
            let p = words.next().unwrap_or_default().to_string();
            (p, words.next())
        };
        let Some(field) = client_field else {
            pending_path = Some(path);
            continue;
        };
        let (client, options) = match field.split_once('(') {
            Some((c, rest)) => (
                c.to_string(),
                rest.trim_end_matches(')')
                    .split(',')
                    .filter(|o| !o.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            None => (field.to_string(), Vec::new()),
        };
        out.push(ActiveExport {
            path: PathBuf::from(path),
            client,
            options,
        });
    }
    out
}

/// Parses `firewall-cmd --list-services` (space-separated names).
pub fn parse_firewall_services(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

/// Parses `ip -o route get ADDR`: the `src` address of the route.
pub fn parse_ip_route_get(text: &str) -> Option<IpAddr> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "src")
        .and_then(|w| w[1].parse().ok())
}

/// Parses `ip -o addr show`: each `inet`/`inet6` address with its network. Loopback and
/// link-local addresses are skipped.
pub fn parse_ip_addr_show(text: &str) -> Vec<(IpAddr, Cidr)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            if w[0] != "inet" && w[0] != "inet6" {
                continue;
            }
            let Some((addr, prefix)) = w[1].split_once('/') else {
                continue;
            };
            let (Ok(addr), Ok(prefix)) = (addr.parse::<IpAddr>(), prefix.parse::<u8>()) else {
                continue;
            };
            let link_local = match addr {
                IpAddr::V4(a) => a.is_link_local(),
                IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
            };
            if addr.is_loopback() || link_local {
                continue;
            }
            if let Some(net) = Cidr::new(addr, prefix) {
                out.push((addr, net));
            }
        }
    }
    out
}
