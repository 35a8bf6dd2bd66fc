//! The objects as YAML: multi-document output for `--dry-run=client`, and the files of
//! `manifests/` (one per object group, stable order, no Secret: a README says how to make one).

use kube::Resource;
use pgset_spec::contract::secret::{
    CLUSTER_ID_KEY, REPLICATION_PASSWORD_KEY, SUPERUSER_PASSWORD_KEY,
};
use pgset_spec::{ClusterSpec, TlsMode, ValidSpec};
use serde::Serialize;

use crate::{ClusterObjects, Error, Result};

/// One file of the rendered manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// File name inside the manifests directory.
    pub name: &'static str,
    /// Its full content.
    pub content: String,
}

/// One object as a YAML document (without the `---` separator).
pub fn to_yaml<K>(object: &K) -> Result<String>
where
    K: Serialize + Resource<DynamicType = ()>,
{
    serde_saphyr::to_string(object).map_err(|e| Error::Yaml {
        kind: crate::apply::kind_of::<K>(),
        name: object.meta().name.clone().unwrap_or_default(),
        message: e.to_string(),
    })
}

/// Joins YAML documents into one multi-document stream, each starting with `---`.
fn documents(docs: Vec<String>) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// Groups of the objects in apply order: (file name, YAML documents). The Secret is not
/// among them: it holds passwords.
fn groups(objects: &ClusterObjects) -> Result<Vec<(&'static str, Vec<String>)>> {
    let ClusterObjects {
        service_account,
        role,
        role_binding,
        member_policy,
        member_policy_binding,
        cluster_record,
        headless_service,
        master_service,
        replica_service,
        shared_claim,
        statefulset,
        cert_renewal,
    } = objects;
    let mut groups = vec![
        (
            "10-rbac.yaml",
            vec![
                to_yaml(service_account)?,
                to_yaml(role)?,
                to_yaml(role_binding)?,
            ],
        ),
        (
            "15-isolation.yaml",
            vec![to_yaml(member_policy)?, to_yaml(member_policy_binding)?],
        ),
        ("20-record.yaml", vec![to_yaml(cluster_record)?]),
        (
            "30-services.yaml",
            vec![
                to_yaml(headless_service)?,
                to_yaml(master_service)?,
                to_yaml(replica_service)?,
            ],
        ),
    ];
    if let Some(claim) = shared_claim {
        groups.push(("40-claim.yaml", vec![to_yaml(claim)?]));
    }
    groups.push(("50-statefulset.yaml", vec![to_yaml(statefulset)?]));
    if let Some(r) = cert_renewal {
        groups.push((
            "60-cert-renewal.yaml",
            vec![
                to_yaml(&r.service_account)?,
                to_yaml(&r.role)?,
                to_yaml(&r.role_binding)?,
                to_yaml(&r.cron_job)?,
            ],
        ));
    }
    Ok(groups)
}

/// Every object pgset applies, as one multi-document YAML stream in apply order (the Secret is
/// left out: see [`secret_instructions`]).
pub fn multi_document(spec: &ValidSpec) -> Result<String> {
    let objects = ClusterObjects::build(spec);
    let docs = groups(&objects)?
        .into_iter()
        .flat_map(|(_, docs)| docs)
        .collect();
    Ok(documents(docs))
}

/// The shell commands that create the Secret by hand with random passwords, without putting a
/// password on a command line or on the screen.
pub fn secret_instructions(spec: &ClusterSpec) -> String {
    format!(
        "dir=$(mktemp -d) && chmod 700 \"$dir\"\n\
         for key in {SUPERUSER_PASSWORD_KEY} {REPLICATION_PASSWORD_KEY}; do\n  \
         tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >\"$dir/$key\"\n\
         done\n\
         tr -dc 'a-f0-9' </dev/urandom | head -c 32 >\"$dir/{CLUSTER_ID_KEY}\"\n\
         kubectl -n {ns} create secret generic {name} \\\n  \
         --from-file={SUPERUSER_PASSWORD_KEY}=\"$dir/{SUPERUSER_PASSWORD_KEY}\" \\\n  \
         --from-file={REPLICATION_PASSWORD_KEY}=\"$dir/{REPLICATION_PASSWORD_KEY}\" \\\n  \
         --from-file={CLUSTER_ID_KEY}=\"$dir/{CLUSTER_ID_KEY}\"\n\
         kubectl -n {ns} label secret {name} {labels}\n\
         rm -r \"$dir\"\n",
        ns = spec.namespace,
        name = spec.secret_name(),
        labels = spec
            .common_labels()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// What the README says about the TLS Secrets the StatefulSet mounts: they are never rendered
/// (no key is ever in a manifest); `deploy` makes them, or the user does.
fn tls_instructions(spec: &ClusterSpec) -> String {
    match spec.tls.mode {
        TlsMode::Off => "TLS is off (`tls.mode: off`): no certificate Secret is needed.".into(),
        TlsMode::Provided => format!(
            "Your TLS Secrets `{server}` and `{repl}` (`tls.mode: provided`), each with\n   \
             `tls.crt`, `tls.key` and `ca.crt`: the StatefulSet mounts them.",
            server = spec.tls_server_secret_name(),
            repl = spec.tls_replication_secret_name()
        ),
        TlsMode::Auto => format!(
            "The TLS Secrets `{server}` and `{repl}` (`tls.mode: auto`): the StatefulSet\n   \
             mounts them. They are not rendered, so that no key is ever committed: `pgset deploy`\n   \
             makes them from the CA it keeps in Secret `{ca}` (and the CA certificate in\n   \
             ConfigMap `{cm}`). By hand, issue them with cert-manager (a Certificate per Secret,\n   \
             `secretName` as above, `ca.crt` in each, the replication one with `commonName: {user}`),\n   \
             or render with `tls.mode: off`. {networks}",
            networks = replication_networks_note(spec),
            server = spec.tls_server_secret_name(),
            repl = spec.tls_replication_secret_name(),
            ca = spec.ca_secret_name(),
            cm = spec.ca_configmap_name(),
            user = pgset_spec::contract::REPLICATION_USER,
        ),
    }
}

/// Where the rendered members admit replication from: `deploy` fills the pod network in when
/// the spec names none; a rendered manifest has only the spec.
fn replication_networks_note(spec: &ClusterSpec) -> String {
    if spec.access.replication_from.is_empty() {
        "The rendered members admit\n   replication from any address (by the replication certificate only); `pgset deploy` restricts it\n   \
         to the pod network it finds, and `access.replicationFrom` in the spec restricts the render too."
            .into()
    } else {
        let nets: Vec<String> = spec
            .access
            .replication_from
            .iter()
            .map(|n| n.to_string())
            .collect();
        format!(
            "The members admit replication\n   from {} only (`access.replicationFrom`).",
            nets.join(", ")
        )
    }
}

fn readme(spec: &ClusterSpec, files: &[ManifestFile]) -> String {
    let list: String = files.iter().map(|f| format!("- `{}`\n", f.name)).collect();
    format!(
        "# Manifests\n\n\
         Rendered by `pgset render` (`cargo xtask render` in a checkout) for cluster `{name}` in namespace `{ns}`, {replicas}\n\
         members, storage mode `{mode}`. Do not edit them by hand: change the code or the spec\n\
         and render again. A test fails when they differ from the code.\n\n\
         `pgset deploy` applies the same objects (and creates the Secret and the TLS material). To follow along\n\
         with kubectl instead, in this order:\n\n\
         1. The NFS PersistentVolumes (`pgset volumes` creates them).\n\
         2. The Secret `{secret}` with random passwords. It is not rendered here, so that no\n   \
         password is ever committed; create it without a password on any command line:\n\n\
         ```sh\n{instructions}```\n\n\
         3. For a new cluster only, its record saying so (the master runs initdb only on a record\n   \
         that says `{state}: {new}`; `create` never overwrites a record that exists):\n\n\
         ```sh\nkubectl -n {ns} create configmap {record} --from-literal={state}={new}\n```\n\n\
         4. {tls}\n\n\
         5. `kubectl apply -f manifests/`, which applies, in order:\n\n{list}\n\
         `15-isolation.yaml` holds the cluster-scoped ValidatingAdmissionPolicy and its binding\n\
         `{policy}` that let each member's ServiceAccount token act only as its own pod. They\n\
         need Kubernetes 1.30 or newer (`admissionregistration.k8s.io/v1`); on an older cluster\n\
         leave that file out: member isolation is then not enforced.\n",
        name = spec.name,
        ns = spec.namespace,
        replicas = spec.replicas,
        mode = spec.storage.mode,
        secret = spec.secret_name(),
        instructions = secret_instructions(spec),
        record = spec.record_name(),
        state = pgset_spec::contract::record::STATE,
        new = pgset_spec::contract::record::STATE_NEW,
        policy = crate::isolation::policy_name(spec),
        tls = tls_instructions(spec),
    )
}

/// The files of the manifests directory for `spec`, in a stable order: the object groups,
/// then `README.md`.
pub fn manifest_files(spec: &ValidSpec) -> Result<Vec<ManifestFile>> {
    let objects = ClusterObjects::build(spec);
    let mut files: Vec<ManifestFile> = groups(&objects)?
        .into_iter()
        .map(|(name, docs)| ManifestFile {
            name,
            content: documents(docs),
        })
        .collect();
    files.push(ManifestFile {
        name: "README.md",
        content: readme(spec, &files),
    });
    Ok(files)
}

/// File names [`manifest_files`] can produce for any spec (so a stale file from another
/// storage mode is noticed).
pub const ALL_MANIFEST_FILES: &[&str] = &[
    "10-rbac.yaml",
    "15-isolation.yaml",
    "20-record.yaml",
    "30-services.yaml",
    "40-claim.yaml",
    "50-statefulset.yaml",
    "60-cert-renewal.yaml",
    "README.md",
];

/// How the files in `dir` differ from `files`: one line per file that differs, is missing,
/// or is left over from another spec. Empty when they match.
pub fn manifest_drift(dir: &std::path::Path, files: &[ManifestFile]) -> Vec<String> {
    let mut drift = Vec::new();
    for file in files {
        let path = dir.join(file.name);
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if on_disk == file.content => {}
            Ok(_) => drift.push(format!("{} differs from the code", path.display())),
            Err(e) => drift.push(format!("{} cannot be read: {e}", path.display())),
        }
    }
    for name in ALL_MANIFEST_FILES {
        let path = dir.join(name);
        if !files.iter().any(|f| f.name == *name) && path.exists() {
            drift.push(format!("{} is not rendered for this spec", path.display()));
        }
    }
    drift
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{named_spec, spec_in_mode};
    use pgset_spec::StorageMode;

    #[test]
    fn multi_document_lists_every_object_in_apply_order() {
        let yaml = multi_document(&named_spec("db", "prod")).unwrap();
        let kinds: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
                "ConfigMap",
                "Service",
                "Service",
                "Service",
                "PersistentVolumeClaim",
                "StatefulSet",
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "CronJob"
            ]
        );
        assert_eq!(yaml.matches("---\n").count(), 15);
        assert!(!yaml.contains("kind: Secret"));
    }

    #[test]
    fn yaml_keeps_numeric_looking_strings_as_strings() {
        let yaml = multi_document(&named_spec("db", "prod")).unwrap();
        // Env values must stay strings for the API server.
        assert!(
            yaml.contains("value: '5432'") || yaml.contains("value: \"5432\""),
            "{yaml}"
        );
        assert!(
            yaml.contains("value: '*'") || yaml.contains("value: \"*\""),
            "{yaml}"
        );
    }

    #[test]
    fn templates_mode_has_no_claim_file() {
        let files = manifest_files(&spec_in_mode(StorageMode::Templates, None)).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "10-rbac.yaml",
                "15-isolation.yaml",
                "20-record.yaml",
                "30-services.yaml",
                "50-statefulset.yaml",
                "60-cert-renewal.yaml",
                "README.md"
            ]
        );
        for name in names {
            assert!(ALL_MANIFEST_FILES.contains(&name));
        }
    }

    #[test]
    fn readme_creates_the_secret_without_password_on_a_command_line() {
        let files = manifest_files(&named_spec("db", "prod")).unwrap();
        let readme = &files.last().unwrap().content;
        assert!(readme.contains("kubectl -n prod create secret generic db-secret"));
        assert!(readme.contains("--from-file=superuser-password="));
        assert!(readme.contains("--from-file=replication-password="));
        assert!(readme.contains("--from-file=cluster-id="));
        // The only literal on a command line is the record's state, never a secret.
        let literals: Vec<&str> = readme
            .lines()
            .filter(|l| l.contains("--from-literal"))
            .collect();
        assert_eq!(
            literals,
            ["kubectl -n prod create configmap db-record --from-literal=state=new"]
        );
    }
}
