//! The next step after a library error, as a command of this program: the libraries say what
//! is wrong and what to fix in their own terms; this layer names the command that does it.

use pgset_deploy::Error as DeployError;
use pgset_verify::Error as VerifyError;

/// The command of this program that fixes what `err` reports, when there is one. `program` is
/// how the user started it (`pgset`, `cargo xtask`).
pub fn next_step(err: &anyhow::Error, program: &str) -> Option<String> {
    err.chain().find_map(|cause| {
        if let Some(e) = cause.downcast_ref::<DeployError>() {
            return for_deploy(e, program);
        }
        if let Some(pgset_nfs::Error::NotRoot { .. }) = cause.downcast_ref() {
            return Some(format!("`sudo -E {program} nfs` runs it as root"));
        }
        match cause.downcast_ref::<VerifyError>()? {
            VerifyError::NotDeployed { name, namespace } => Some(format!(
                "`{program} up` (or `{program} deploy`) -n {namespace} --name {name} deploys it"
            )),
            VerifyError::Deploy(e) => for_deploy(e, program),
            _ => None,
        }
    })
}

fn for_deploy(err: &DeployError, program: &str) -> Option<String> {
    match err {
        DeployError::NotDeployed { name, namespace } => Some(format!(
            "`{program} deploy -n {namespace} --name {name}` deploys it"
        )),
        DeployError::StatefulSetImmutable {
            name, namespace, ..
        } => Some(format!(
            "`{program} down -n {namespace} --name {name}` takes it down (claims and data stay)"
        )),
        DeployError::VolumesHeldElsewhere { .. } => Some(format!(
            "`{program} down -n NAMESPACE --name NAME` stops the cluster that owns that claim"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_and_verify_errors_name_the_command_that_fixes_them() {
        let missing = anyhow::Error::new(DeployError::NotDeployed {
            name: "db".into(),
            namespace: "prod".into(),
        })
        .context("scale");
        assert_eq!(
            next_step(&missing, "cargo xtask").as_deref(),
            Some("`cargo xtask deploy -n prod --name db` deploys it")
        );
        let wrapped = anyhow::Error::new(VerifyError::Deploy(DeployError::NotDeployed {
            name: "db".into(),
            namespace: "prod".into(),
        }));
        assert_eq!(
            next_step(&wrapped, "pgset").as_deref(),
            Some("`pgset deploy -n prod --name db` deploys it")
        );
        let timeout = anyhow::Error::new(DeployError::Timeout {
            what: "x".into(),
            waited: std::time::Duration::from_secs(1),
            status: "y".into(),
        });
        assert_eq!(next_step(&timeout, "pgset"), None);
        // A refusal under the storage error still names its fix.
        let held = anyhow::Error::new(pgset_deploy::storage::StorageError::Volumes {
            cluster: "default/pgset".into(),
            source: DeployError::VolumesHeldElsewhere {
                held: vec!["PersistentVolume pv2 is held".into()],
            },
        });
        assert_eq!(
            next_step(&held, "pgset").as_deref(),
            Some("`pgset down -n NAMESPACE --name NAME` stops the cluster that owns that claim")
        );
        let root = anyhow::Error::new(pgset_nfs::Error::NotRoot { steps: 3 });
        assert_eq!(
            next_step(&root, "pgset").as_deref(),
            Some("`sudo -E pgset nfs` runs it as root")
        );
    }
}
