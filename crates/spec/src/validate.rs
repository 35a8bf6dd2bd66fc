//! Validation of a [`ClusterSpec`]: names, bounds, paths, image references, quantities.

use std::path::{Component, Path};

use crate::image_ref::ImageReference;
use crate::{ClusterSpec, Error, MAX_NAME_LEN, MAX_REPLICAS, Result, StorageMode, TlsMode};

fn invalid(
    field: &'static str,
    value: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> Error {
    Error::Invalid {
        field,
        value: value.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// One check of a spec: `Err` with the problem and its fix.
type Check = fn(&ClusterSpec) -> Result<()>;

/// Every check of a spec, named, in the order they run.
const CHECKS: &[(&str, Check)] = &[
    ("name-label", name_label),
    ("name-starts-with-letter", name_starts_with_letter),
    ("name-not-reserved", name_not_reserved),
    ("namespace", namespace),
    ("replicas", replicas),
    ("storage-size", storage_size),
    ("storage-class", storage_class),
    ("nfs-export", nfs_export),
    ("nfs-server", nfs_server),
    ("nfs-version", nfs_version),
    ("postgres-image", postgres_image),
    ("postgres-major", postgres_major),
    ("agent-image", agent_image),
    ("agent-pull-policy", agent_pull_policy),
    ("postgres-ids", postgres_ids),
    ("resource-quantities", resource_quantities),
    ("memory-request-within-limit", memory_request_within_limit),
    ("probe-bounds", probe_bounds),
    ("startup-timeout", startup_timeout),
    ("termination-grace-period", termination_grace_period),
    ("replica-lag-bytes", replica_lag_bytes),
    ("replica-lag-seconds", replica_lag_seconds),
    ("synchronous", synchronous),
    ("maximum-lag-on-failover", maximum_lag_on_failover),
    ("tls-secrets", tls_secrets),
    ("access-needs-tls", access_needs_tls),
];

/// Validates the whole spec; the first problem wins.
pub(crate) fn spec(s: &ClusterSpec) -> Result<()> {
    CHECKS.iter().try_for_each(|(_, check)| check(s))
}

fn name_label(s: &ClusterSpec) -> Result<()> {
    if !is_dns1123_label(&s.name) || s.name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "name (--name)",
            &s.name,
            format!("not a DNS-1123 label of at most {MAX_NAME_LEN} characters"),
            "use lowercase letters, digits and '-', starting with a letter and ending with a letter or digit, e.g. `pgset`",
        ));
    }
    Ok(())
}

fn name_starts_with_letter(s: &ClusterSpec) -> Result<()> {
    if !s.name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(
            "name (--name)",
            &s.name,
            "must start with a letter (it names Services)",
            "e.g. `pgset`",
        ));
    }
    Ok(())
}

fn name_not_reserved(s: &ClusterSpec) -> Result<()> {
    if crate::contract::MEMBER_SUFFIXES.contains(&s.name.as_str()) || s.name.starts_with("stale-") {
        return Err(invalid(
            "name (--name)",
            &s.name,
            "is reserved: the agent keeps files and directories named `<member>.<suffix>` beside \
             member directories, and another cluster's directory is `<namespace>.<name>`, so this \
             name could meet one of them",
            "choose another name, e.g. `pgset` or `db`",
        ));
    }
    Ok(())
}

fn namespace(s: &ClusterSpec) -> Result<()> {
    if !is_dns1123_label(&s.namespace) {
        return Err(invalid(
            "namespace (-n/--namespace)",
            &s.namespace,
            "not a DNS-1123 label",
            "use lowercase letters, digits and '-', at most 63 characters, e.g. `default`",
        ));
    }
    Ok(())
}

fn replicas(s: &ClusterSpec) -> Result<()> {
    if !(1..=MAX_REPLICAS).contains(&s.replicas) {
        return Err(invalid(
            "replicas (--replicas)",
            s.replicas.to_string(),
            format!("must be between 1 and {MAX_REPLICAS}"),
            "one master plus replicas: 2 or 3 is usual; use `down` to remove the cluster",
        ));
    }
    Ok(())
}

fn storage_size(s: &ClusterSpec) -> Result<()> {
    positive_quantity("storage.size", &s.storage.size)
}

fn storage_class(s: &ClusterSpec) -> Result<()> {
    if let Some(class) = &s.storage.storage_class {
        if !is_dns1123_subdomain(class) {
            return Err(invalid(
                "storage.storageClass",
                class,
                "not a valid StorageClass name",
                "name an existing StorageClass (`kubectl get storageclass`), or leave it unset for pgset's NFS volumes",
            ));
        }
        if s.storage.mode == StorageMode::Shared {
            return Err(invalid(
                "storage.storageClass",
                class,
                "only used in `templates` storage mode",
                "set storage.mode: templates (--storage templates), or remove storageClass",
            ));
        }
    }
    Ok(())
}

fn nfs_export(s: &ClusterSpec) -> Result<()> {
    validate_export_path(&s.nfs.export).map_err(|problem| {
        let fix = if system_export_path_problem(&s.nfs.export).is_some() {
            SYSTEM_EXPORT_PATH_FIX
        } else {
            "use an absolute path without spaces or special characters, e.g. /nfsfileshare"
        };
        invalid(
            "nfs.export (--nfs-export)",
            s.nfs.export.display().to_string(),
            problem,
            fix,
        )
    })
}

fn nfs_server(s: &ClusterSpec) -> Result<()> {
    if let Some(server) = &s.nfs.server
        && !is_host_or_ip(server)
    {
        return Err(invalid(
            "nfs.server (--nfs-server)",
            server,
            "not an IP address or DNS name",
            "give the address the nodes reach the NFS host at, e.g. 192.168.56.10",
        ));
    }
    Ok(())
}

fn nfs_version(s: &ClusterSpec) -> Result<()> {
    if !matches!(s.nfs.version.as_str(), "3" | "4" | "4.0" | "4.1" | "4.2") {
        return Err(invalid(
            "nfs.version",
            &s.nfs.version,
            "not an NFS version",
            "use 4.1 (default), 4.2, 4 or 3",
        ));
    }
    Ok(())
}

fn postgres_image(s: &ClusterSpec) -> Result<()> {
    if !is_image_reference(&s.postgres.image) {
        return Err(invalid(
            "postgres.image (--postgres-image)",
            &s.postgres.image,
            "not a valid image reference",
            "e.g. postgres:18 or registry.example.com/postgres:18.1",
        ));
    }
    Ok(())
}

fn postgres_major(s: &ClusterSpec) -> Result<()> {
    if let Some(major) = crate::image_tag(&s.postgres.image).and_then(|tag| {
        let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    }) && !crate::contract::SUPPORTED_MAJORS.contains(&major)
    {
        let supported = crate::contract::SUPPORTED_MAJORS;
        return Err(invalid(
            "postgres.image (--postgres-image)",
            &s.postgres.image,
            format!(
                "PostgreSQL {major} is not supported (majors {} to {})",
                supported.start(),
                supported.end()
            ),
            format!("use postgres:{}", supported.end()),
        ));
    }
    Ok(())
}

fn agent_image(s: &ClusterSpec) -> Result<()> {
    if !is_image_reference(&s.agent.image) {
        return Err(invalid(
            "agent.image (--agent-image)",
            &s.agent.image,
            "not a valid image reference",
            "e.g. docker.io/library/pgset-agent:0.1.0 (the agent image this version builds)",
        ));
    }
    Ok(())
}

fn agent_pull_policy(s: &ClusterSpec) -> Result<()> {
    if !matches!(
        s.agent.pull_policy.as_str(),
        "IfNotPresent" | "Always" | "Never"
    ) {
        return Err(invalid(
            "agent.pullPolicy",
            &s.agent.pull_policy,
            "not an image pull policy",
            "use IfNotPresent, Always or Never",
        ));
    }
    Ok(())
}

fn postgres_ids(s: &ClusterSpec) -> Result<()> {
    for (field, v) in [
        ("postgres.uid", s.postgres.uid),
        ("postgres.gid", s.postgres.gid),
    ] {
        if !(1..=2_147_483_647).contains(&v) {
            return Err(invalid(
                field,
                v.to_string(),
                "must be a non-root id",
                "use the postgres user's id in the image (999 in the official image)",
            ));
        }
    }
    Ok(())
}

fn resource_quantities(s: &ClusterSpec) -> Result<()> {
    positive_quantity("resources.cpuRequest", &s.resources.cpu_request)?;
    positive_quantity("resources.memoryRequest", &s.resources.memory_request)?;
    positive_quantity("resources.memoryLimit", &s.resources.memory_limit)
}

fn memory_request_within_limit(s: &ClusterSpec) -> Result<()> {
    if let (Some(req), Some(lim)) = (
        parse_quantity_bytes(&s.resources.memory_request),
        parse_quantity_bytes(&s.resources.memory_limit),
    ) && req > lim
    {
        return Err(invalid(
            "resources.memoryRequest",
            &s.resources.memory_request,
            format!("larger than memoryLimit {}", s.resources.memory_limit),
            "make the request at most the limit",
        ));
    }
    Ok(())
}

fn probe_bounds(s: &ClusterSpec) -> Result<()> {
    let p = &s.probes;
    for (field, v, max) in [
        (
            "probes.readinessPeriodSeconds",
            p.readiness_period_seconds,
            300,
        ),
        ("probes.startupPeriodSeconds", p.startup_period_seconds, 300),
        (
            "probes.startupTimeoutSeconds",
            p.startup_timeout_seconds,
            86_400,
        ),
        (
            "probes.livenessPeriodSeconds",
            p.liveness_period_seconds,
            300,
        ),
        (
            "probes.livenessFailureThreshold",
            p.liveness_failure_threshold,
            100,
        ),
        ("probes.timeoutSeconds", p.timeout_seconds, 60),
    ] {
        if !(1..=max).contains(&v) {
            return Err(invalid(
                field,
                v.to_string(),
                format!("must be between 1 and {max}"),
                "see the defaults and limits in docs/reference.md",
            ));
        }
    }
    Ok(())
}

fn startup_timeout(s: &ClusterSpec) -> Result<()> {
    let p = &s.probes;
    if p.startup_timeout_seconds < p.startup_period_seconds {
        return Err(invalid(
            "probes.startupTimeoutSeconds",
            p.startup_timeout_seconds.to_string(),
            "shorter than startupPeriodSeconds",
            "allow at least one startup probe period",
        ));
    }
    Ok(())
}

fn termination_grace_period(s: &ClusterSpec) -> Result<()> {
    let p = &s.probes;
    if !(60..=3600).contains(&p.termination_grace_period_seconds) {
        return Err(invalid(
            "probes.terminationGracePeriodSeconds",
            p.termination_grace_period_seconds.to_string(),
            "must be between 60 and 3600",
            "PostgreSQL needs time for a clean shutdown checkpoint: 60 or more",
        ));
    }
    Ok(())
}

fn replica_lag_bytes(s: &ClusterSpec) -> Result<()> {
    let lag = &s.replication.max_replica_lag;
    if lag.bytes < 1024 * 1024 {
        return Err(invalid(
            "replication.maxReplicaLag.bytes",
            lag.bytes.to_string(),
            "less than 1 MiB: a replica replaying a single large transaction would leave the \
             replica Service",
            format!(
                "use at least 1048576 (the default is {})",
                crate::DEFAULT_MAX_REPLICA_LAG_BYTES
            ),
        ));
    }
    Ok(())
}

fn replica_lag_seconds(s: &ClusterSpec) -> Result<()> {
    let lag = &s.replication.max_replica_lag;
    if !(1..=86_400).contains(&lag.seconds) {
        return Err(invalid(
            "replication.maxReplicaLag.seconds",
            lag.seconds.to_string(),
            "must be between 1 and 86400",
            format!("the default is {}", crate::DEFAULT_MAX_REPLICA_LAG_SECONDS),
        ));
    }
    Ok(())
}

fn synchronous(s: &ClusterSpec) -> Result<()> {
    if let Some(sync) = s.replication.synchronous {
        let replicas = u32::try_from(s.replicas.saturating_sub(1)).unwrap_or(0);
        if sync.number == 0 {
            return Err(invalid(
                "replication.synchronous.number",
                "0",
                "must be at least 1",
                "remove replication.synchronous for asynchronous replication",
            ));
        }
        if sync.durability == crate::Durability::Required && sync.number > replicas {
            return Err(invalid(
                "replication.synchronous.number",
                sync.number.to_string(),
                format!(
                    "is more than the {replicas} replica(s) of {} members: with durability \
                     required no write would ever be acknowledged",
                    s.replicas
                ),
                format!(
                    "use at most {replicas}, add members (replicas: {}), or use durability: preferred",
                    u64::from(sync.number) + 1
                ),
            ));
        }
    }
    Ok(())
}

fn maximum_lag_on_failover(s: &ClusterSpec) -> Result<()> {
    let most = 1024 * 1024 * 1024;
    if s.replication.maximum_lag_on_failover > most {
        return Err(invalid(
            "replication.maximumLagOnFailover",
            s.replication.maximum_lag_on_failover.to_string(),
            "more than 1 GiB: a replica promoted that far behind would lose that many bytes of \
             acknowledged writes",
            format!(
                "use at most {most} (the default is {})",
                crate::DEFAULT_MAXIMUM_LAG_ON_FAILOVER
            ),
        ));
    }
    Ok(())
}

fn tls_secrets(s: &ClusterSpec) -> Result<()> {
    let tls = &s.tls;
    let given = [
        ("tls.serverSecret", &tls.server_secret),
        ("tls.replicationSecret", &tls.replication_secret),
    ];
    for (field, secret) in given {
        match (tls.mode, secret) {
            (TlsMode::Provided, None) => {
                return Err(invalid(
                    field,
                    "",
                    "tls.mode provided needs the Secrets holding the certificates",
                    format!(
                        "name the Secret (tls.crt, tls.key and ca.crt, as cert-manager writes them) in {field}, or use tls.mode auto to have pgset make them"
                    ),
                ));
            }
            (TlsMode::Provided, Some(name)) if !is_dns1123_subdomain(name) => {
                return Err(invalid(
                    field,
                    name.as_str(),
                    "not a Secret name (a DNS-1123 subdomain)",
                    "name an existing Secret of the cluster's namespace, e.g. `db-server-tls`",
                ));
            }
            (TlsMode::Auto | TlsMode::Off, Some(name)) => {
                return Err(invalid(
                    field,
                    name.as_str(),
                    format!("only read with tls.mode provided, not {}", tls.mode),
                    format!("remove {field}, or set tls.mode: provided to use your own Secrets"),
                ));
            }
            _ => {}
        }
    }
    if tls.mode == TlsMode::Provided && tls.server_secret == tls.replication_secret {
        return Err(invalid(
            "tls.replicationSecret",
            tls.replication_secret.clone().unwrap_or_default(),
            "the same Secret as tls.serverSecret: the replication certificate is a client certificate of its own (CN = the replication user)",
            "name a second Secret holding the replication role's client certificate",
        ));
    }
    Ok(())
}

fn access_needs_tls(s: &ClusterSpec) -> Result<()> {
    let given = [
        ("access.superuserFrom", &s.access.superuser_from),
        ("access.replicationFrom", &s.access.replication_from),
    ];
    for (field, networks) in given {
        if s.tls.mode == TlsMode::Off && !networks.is_empty() {
            let list: Vec<String> = networks.iter().map(|n| n.to_string()).collect();
            return Err(invalid(
                field,
                list.join(", "),
                "only applied with TLS on: with tls.mode off the members keep the pg_hba.conf initdb wrote",
                format!("remove {field}, or use tls.mode auto (the default)"),
            ));
        }
    }
    Ok(())
}

fn positive_quantity(field: &'static str, v: &str) -> Result<()> {
    match parse_quantity_bytes(v) {
        Some(n) if n > 0.0 => Ok(()),
        Some(_) => Err(invalid(
            field,
            v,
            "must be greater than zero",
            "e.g. 1Gi, 512Mi, 100m",
        )),
        None => Err(invalid(
            field,
            v,
            "not a Kubernetes quantity",
            "e.g. 1Gi, 512Mi, 100m, 2",
        )),
    }
}

/// A DNS-1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_host_or_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
        || (is_dns1123_subdomain(&s.to_ascii_lowercase()) && s.len() <= 253)
}

/// Directories of the operating system that may never be the export themselves, though a
/// directory below them may (`/srv/nfs`, `/mnt/data`, `/home/nfs`, `/tmp/...`).
const SYSTEM_DIRECTORIES: [&str; 9] = [
    "/", "/home", "/media", "/mnt", "/opt", "/root", "/srv", "/tmp", "/var",
];

/// The operating system's own trees: neither they nor anything below them may be the export.
const SYSTEM_TREES: [&str; 27] = [
    "/bin",
    "/boot",
    "/dev",
    "/efi",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/lost+found",
    "/nix",
    "/proc",
    "/run",
    "/sbin",
    "/snap",
    "/sys",
    "/usr",
    "/var/account",
    "/var/adm",
    "/var/cache",
    "/var/crash",
    "/var/db",
    "/var/empty",
    "/var/lib",
    "/var/lock",
    "/var/log",
    "/var/run",
];

/// More of `/var` that belongs to the system (kept apart to keep the table readable).
const SYSTEM_TREES_VAR: [&str; 3] = ["/var/mail", "/var/spool", "/var/yp"];

/// What to do when the export path is the operating system's.
pub const SYSTEM_EXPORT_PATH_FIX: &str = "choose a directory of its own for the export with --nfs-export (e.g. /nfsfileshare or /srv/nfs/pgset)";

/// Why `path` may not be the export when it is a system directory or lies inside one of the
/// operating system's own trees; `None` when it may. `path` is absolute and normalized. One
/// rule for every command: the spec's validation applies it before anything changes, and the
/// NFS host applies it again to the path the export resolves to.
pub fn system_export_path_problem(path: &Path) -> Option<String> {
    if SYSTEM_DIRECTORIES.iter().any(|d| path == Path::new(d)) {
        return Some(format!(
            "{} is a system directory; exporting it would hand it to the postgres user with mode 0700 and lock every other user and service out",
            path.display()
        ));
    }
    let tree = SYSTEM_TREES
        .iter()
        .chain(SYSTEM_TREES_VAR.iter())
        .find(|t| path.starts_with(t))?;
    Some(if path == Path::new(tree) {
        format!(
            "{} belongs to the operating system; exporting it would hand it to the postgres user with mode 0700",
            path.display()
        )
    } else {
        format!(
            "{} is inside {tree}, which belongs to the operating system",
            path.display()
        )
    })
}

/// Checks an NFS export path: absolute, normalized, free of characters that `/etc/exports` or
/// a mount option would misread, and not the operating system's
/// ([`system_export_path_problem`]). Returns the problem in words.
pub fn validate_export_path(p: &Path) -> std::result::Result<(), String> {
    let Some(s) = p.to_str() else {
        return Err("not valid UTF-8".into());
    };
    if s.is_empty() {
        return Err("empty".into());
    }
    if !p.is_absolute() {
        return Err("not an absolute path".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "contains whitespace or a control character ({c:?})"
        ));
    }
    if let Some(c) = s.chars().find(|c| {
        matches!(
            c,
            '#' | '"' | '\'' | '\\' | '(' | ')' | ',' | '*' | '?' | '$' | '`'
        )
    }) {
        return Err(format!(
            "contains {c:?}, which /etc/exports or a shell would misread"
        ));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || s.contains("//")
        || s.contains("/./")
        || s.ends_with("/.")
        || (s.len() > 1 && s.ends_with('/'))
    {
        return Err("not a normalized path (no `.`, `..`, `//` or trailing `/`)".into());
    }
    if s.len() > 1024 {
        return Err("longer than 1024 characters".into());
    }
    match system_export_path_problem(p) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// A container image reference: `[registry[:port]/]path[:tag][@algo:digest]` as the
/// distribution reference grammar allows it ([`ImageReference::parse`]).
pub fn is_image_reference(s: &str) -> bool {
    ImageReference::parse(s).is_some()
}

/// Parses a Kubernetes quantity (`1Gi`, `500m`, `2`, `1e3`, `1.5G`) into its value
/// (bytes for memory, cores for CPU). `None` when it is not a quantity.
pub fn parse_quantity_bytes(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || s != s.trim() {
        return None;
    }
    let num_end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '+' || *c == '-'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let unsigned = num.strip_prefix(['+', '-']).unwrap_or(num);
    if unsigned.is_empty()
        || unsigned.contains(['+', '-'])
        || unsigned.matches('.').count() > 1
        || unsigned == "."
    {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().ok()?;
            10f64.powi(exp)
        }
        _ => return None,
    };
    Some(value * mult)
}

#[cfg(test)]
mod export_path_tests {
    use super::*;
    use crate::NfsSpec;

    #[test]
    fn the_checks_run_in_this_order() {
        let names: Vec<&str> = CHECKS.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "name-label",
                "name-starts-with-letter",
                "name-not-reserved",
                "namespace",
                "replicas",
                "storage-size",
                "storage-class",
                "nfs-export",
                "nfs-server",
                "nfs-version",
                "postgres-image",
                "postgres-major",
                "agent-image",
                "agent-pull-policy",
                "postgres-ids",
                "resource-quantities",
                "memory-request-within-limit",
                "probe-bounds",
                "startup-timeout",
                "termination-grace-period",
                "replica-lag-bytes",
                "replica-lag-seconds",
                "synchronous",
                "maximum-lag-on-failover",
                "tls-secrets",
                "access-needs-tls",
            ]
        );
    }

    fn refused(p: &str) -> Error {
        let s = ClusterSpec {
            nfs: NfsSpec {
                export: p.into(),
                ..Default::default()
            },
            ..Default::default()
        };
        s.validated().expect_err(p)
    }

    #[test]
    fn system_directories_are_refused_by_validation_with_the_nfs_hosts_words() {
        for p in [
            "/",
            "/etc",
            "/usr",
            "/var",
            "/home",
            "/etc/nfs",
            "/var/lib/pg",
            "/boot/x",
        ] {
            let problem =
                system_export_path_problem(Path::new(p)).unwrap_or_else(|| panic!("{p} accepted"));
            assert_eq!(validate_export_path(Path::new(p)), Err(problem.clone()));
            let e = refused(p).to_string();
            assert!(
                e.contains("nfs.export (--nfs-export)")
                    && e.contains(&problem)
                    && e.contains(SYSTEM_EXPORT_PATH_FIX),
                "{p}: {e}"
            );
        }
        for p in [
            "/nfsfileshare",
            "/srv/nfs/pgset",
            "/var/nfs",
            "/etcetera",
            "/tmp/x",
        ] {
            assert_eq!(validate_export_path(Path::new(p)), Ok(()), "{p}");
        }
    }
}
