//! What the cluster's nodes tell about their addresses: the InternalIP addresses the NFS
//! export's clients and the volumes' server address are derived from.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::{Error, Result};

/// The nodes' InternalIP addresses, in the order listed; one that is not an IP address is
/// [`Error::NodeAddress`]. Pure.
pub fn internal_ips(nodes: &[Node]) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        for a in node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP")
        {
            match a.address.parse::<IpAddr>() {
                Ok(ip) => out.push(ip),
                Err(_) => {
                    return Err(Error::NodeAddress {
                        node: name.to_string(),
                        address: a.address.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addresses: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"addresses": addresses
                .iter()
                .map(|(t, a)| serde_json::json!({"type": t, "address": a}))
                .collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[test]
    fn internal_ips_are_read_in_order_and_other_address_types_are_skipped() {
        let nodes = [
            node(
                "cp",
                &[("InternalIP", "10.0.2.15"), ("Hostname", "cp.lab.example")],
            ),
            node(
                "w1",
                &[("ExternalIP", "203.0.113.7"), ("InternalIP", "fd00::16")],
            ),
            serde_json::from_value(serde_json::json!({"metadata": {"name": "new"}})).unwrap(),
        ];
        let found = internal_ips(&nodes).unwrap();
        assert_eq!(
            found,
            [
                "10.0.2.15".parse::<IpAddr>().unwrap(),
                "fd00::16".parse().unwrap()
            ]
        );
        assert!(internal_ips(&[]).unwrap().is_empty());
    }

    #[test]
    fn an_internal_ip_that_is_not_an_address_names_the_node_and_the_fix() {
        let nodes = [
            node("w1", &[("InternalIP", "10.0.2.16")]),
            node("w2", &[("InternalIP", "not-an-ip")]),
        ];
        let e = internal_ips(&nodes).unwrap_err();
        assert!(
            matches!(&e, Error::NodeAddress { node, address } if node == "w2" && address == "not-an-ip"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "node w2 has an InternalIP \"not-an-ip\" that is not an IP address: pass --clients and --nfs-server"
        );
    }
}
