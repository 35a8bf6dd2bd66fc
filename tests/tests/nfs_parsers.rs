//! The NFS provisioner's parsers on captured real tool output (`tests/fixtures/nfs`).

use std::net::IpAddr;
use std::path::Path;

use pgset_nfs::{
    Cidr, ExportClient, HostAddresses, OsFamily, SelinuxMode, UnitFileState, parse_dpkg_query,
    parse_exportfs_verbose, parse_getenforce, parse_getsebool, parse_ip_addr_show,
    parse_ip_route_get, parse_os_release, parse_rpm_query, parse_unit_file_state,
};
use pgset_tests::fixtures;

fn fixture(name: &str) -> String {
    let p = fixtures().join("nfs").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn os_release_of_each_supported_distribution() {
    let cases = [
        (
            "os-release.centos-7",
            "centos",
            "7",
            "CentOS Linux 7 (Core)",
            OsFamily::El7,
        ),
        (
            "os-release.rocky-9",
            "rocky",
            "9.4",
            "Rocky Linux 9.4 (Blue Onyx)",
            OsFamily::El8Plus,
        ),
        (
            "os-release.debian-12",
            "debian",
            "12",
            "Debian GNU/Linux 12 (bookworm)",
            OsFamily::Debian,
        ),
        (
            "os-release.ubuntu-24.04",
            "ubuntu",
            "24.04",
            "Ubuntu 24.04.1 LTS",
            OsFamily::Debian,
        ),
    ];
    for (file, id, version, pretty, family) in cases {
        let os = parse_os_release(&fixture(file));
        assert_eq!(os.id, id, "{file}");
        assert_eq!(os.version_id, version, "{file}");
        assert_eq!(os.pretty_name, pretty, "{file}");
        assert_eq!(os.family().unwrap(), family, "{file}");
    }
    let rocky = parse_os_release(&fixture("os-release.rocky-9"));
    assert_eq!(rocky.id_like, ["rhel", "centos", "fedora"]);
    assert_eq!(rocky.major_version(), Some(9));
}

#[test]
fn unknown_and_unsupported_systems_are_named_in_the_error() {
    let arch = parse_os_release("NAME=\"Arch Linux\"\nPRETTY_NAME=\"Arch Linux\"\nID=arch\n");
    let err = arch.family().unwrap_err().to_string();
    assert!(
        err.contains("Arch Linux") && err.contains("--nfs-server"),
        "{err}"
    );
    let centos6 =
        parse_os_release("ID=\"centos\"\nVERSION_ID=\"6\"\nPRETTY_NAME=\"CentOS release 6\"\n");
    assert!(centos6.family().is_err());
    let empty = parse_os_release("");
    assert!(empty.family().is_err());
}

#[test]
fn exportfs_verbose_of_debian_12() {
    let active = parse_exportfs_verbose(&fixture("exportfs-v.debian-12"));
    let summary: Vec<(String, String)> = active
        .iter()
        .map(|a| (a.path.display().to_string(), a.client.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "/srv/a-much-longer-export-path".into(),
                "192.168.56.11".into()
            ),
            ("/nfsfileshare".into(), "10.0.2.0/24".into()),
            ("/nfsfileshare".into(), "127.0.0.1/32".into()),
            ("/srv/ro".into(), "<world>".into()),
        ]
    );
    assert_eq!(
        active[1].options,
        [
            "sync",
            "wdelay",
            "hide",
            "no_subtree_check",
            "sec=sys",
            "rw",
            "secure",
            "root_squash",
            "no_all_squash"
        ]
    );
    assert!(active[0].has_pgset_options());
    assert!(active[1].has_pgset_options());
    // ro, async, no_root_squash: not what pgset exports.
    assert!(!active[3].has_pgset_options());
    assert_eq!(active[3].parsed_client(), Some(ExportClient::Everyone));
    assert_eq!(
        active[2].parsed_client(),
        Some(ExportClient::Network(Cidr::host(ip("127.0.0.1"))))
    );
    assert_eq!(active[0].path, Path::new("/srv/a-much-longer-export-path"));
    assert!(parse_exportfs_verbose("").is_empty());
}

#[test]
fn selinux_tools() {
    assert_eq!(
        parse_getenforce(&fixture("getenforce.permissive")),
        Some(SelinuxMode::Permissive)
    );
    assert_eq!(
        parse_getenforce(&fixture("getenforce.enforcing")),
        Some(SelinuxMode::Enforcing)
    );
    assert_eq!(
        parse_getenforce(&fixture("getenforce.disabled")),
        Some(SelinuxMode::Disabled)
    );
    assert_eq!(parse_getenforce("getenforce: command not found\n"), None);
    assert_eq!(
        parse_getsebool(&fixture("getsebool.virt_use_nfs-off")),
        Some(("virt_use_nfs".to_string(), false))
    );
    assert_eq!(
        parse_getsebool("virt_use_nfs --> on\n"),
        Some(("virt_use_nfs".to_string(), true))
    );
    assert_eq!(
        parse_getsebool("Error getting active value for no_such_bool\n"),
        None
    );
}

#[test]
fn systemctl_is_enabled() {
    let cases = [
        ("systemctl-is-enabled.enabled", UnitFileState::Enabled),
        ("systemctl-is-enabled.alias", UnitFileState::Enabled),
        ("systemctl-is-enabled.static", UnitFileState::Static),
        ("systemctl-is-enabled.disabled", UnitFileState::Disabled),
        ("systemctl-is-enabled.masked", UnitFileState::Masked),
    ];
    for (file, state) in cases {
        assert_eq!(parse_unit_file_state(&fixture(file)), state, "{file}");
    }
    // A unit that does not exist: stdout is empty, the message is on stderr.
    assert_eq!(parse_unit_file_state(""), UnitFileState::NotFound);
    assert_eq!(
        parse_unit_file_state("not-found\n"),
        UnitFileState::NotFound
    );
}

#[test]
fn package_queries() {
    let dpkg = parse_dpkg_query(&fixture("dpkg-query.debian-12"));
    assert_eq!(dpkg.get("nfs-kernel-server"), Some(&true));
    assert_eq!(dpkg.get("nfs-common"), Some(&true));
    let removed = parse_dpkg_query("nfs-common rc \nrpcbind ii \n");
    assert_eq!(removed.get("nfs-common"), Some(&false));
    assert_eq!(removed.get("rpcbind"), Some(&true));

    let rpm = parse_rpm_query(
        "nfs-utils\npackage libnfsidmap is not installed\nrpcbind\n",
        &["nfs-utils", "libnfsidmap", "rpcbind"],
    );
    assert_eq!(rpm.get("nfs-utils"), Some(&true));
    assert_eq!(rpm.get("libnfsidmap"), Some(&false));
    assert_eq!(rpm.get("rpcbind"), Some(&true));
}

#[test]
fn host_addresses() {
    let networks = parse_ip_addr_show(&fixture("ip-o-addr-show.debian-12"));
    assert_eq!(
        networks,
        vec![
            (ip("10.0.2.15"), "10.0.2.0/24".parse().unwrap()),
            (ip("fec0::5054:ff:fe12:3456"), "fec0::/64".parse().unwrap()),
        ]
    );
    let addrs = HostAddresses {
        primary: Some(ip("10.0.2.15")),
        networks,
    };
    assert_eq!(
        addrs.primary_network().map(|n| n.to_string()).as_deref(),
        Some("10.0.2.0/24")
    );
    assert_eq!(
        parse_ip_route_get(&fixture("ip-o-route-get.host")),
        Some(ip("192.0.2.2"))
    );
    assert_eq!(
        parse_ip_route_get("RTNETLINK answers: Network is unreachable\n"),
        None
    );
}
