//! The import of the image archive into a node's containerd, where the kubelet finds it: `ctr`
//! found and run as root, the archive imported into the kubelet's namespace, and the import
//! confirmed by containerd's own list of images. Says nothing itself: the caller reports.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use pgset_command::HostCommand;

use crate::reference::ImageName;

/// The containerd namespace the kubelet's images live in.
pub const CONTAINERD_NAMESPACE: &str = "k8s.io";
/// The platform imported from the archive.
pub const IMPORT_PLATFORM: &str = "linux/amd64";

/// `ctr -n k8s.io images import --platform linux/amd64 ARCHIVE`.
pub fn import_command(ctr: &Path, archive: &Path) -> HostCommand {
    HostCommand::new(ctr)
        .args(["-n", CONTAINERD_NAMESPACE, "images", "import"])
        .args(["--platform", IMPORT_PLATFORM])
        .arg(archive)
}

/// `ctr -n k8s.io images ls -q`: one image name a line.
pub fn list_command(ctr: &Path) -> HostCommand {
    HostCommand::new(ctr).args(["-n", CONTAINERD_NAMESPACE, "images", "ls", "-q"])
}

/// Checks an import can run here: `ctr` on PATH and root (ctr talks to containerd's socket,
/// which only root may open). Returns the path of `ctr`.
pub fn import_preflight() -> Result<PathBuf> {
    let ctr = which::which("ctr").map_err(|_| {
        anyhow!(
            "--import needs `ctr`, containerd's client, which is not on PATH: run the import on a \
             Kubernetes node using containerd (it installs ctr with the containerd or \
             containerd.io package), or copy the archive there and run \
             `ctr -n {CONTAINERD_NAMESPACE} images import --platform {IMPORT_PLATFORM} FILE` as root"
        )
    })?;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "--import must run as root: ctr talks to containerd's socket (/run/containerd/containerd.sock), which only root may open"
        );
    }
    Ok(ctr)
}

/// Imports the archive into containerd's `k8s.io` namespace, then confirms containerd lists the
/// image under its full name.
pub fn import(ctr: &Path, archive: &Path, name: &ImageName) -> Result<()> {
    import_command(ctr, archive)
        .read()
        .context("import the agent image into containerd")?;
    let listed = list_command(ctr)
        .read()
        .context("list containerd's images")?;
    if !lists_image(&listed, &name.full) {
        bail!(
            "ctr imported {} but `ctr -n {CONTAINERD_NAMESPACE} images ls -q` does not list {}",
            archive.display(),
            name.full
        );
    }
    Ok(())
}

/// Whether `ctr images ls -q` output lists `full_name`.
pub fn lists_image(listed: &str, full_name: &str) -> bool {
    listed.lines().any(|line| line.trim() == full_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_import_commands_name_the_kubelets_namespace() {
        let ctr = Path::new("/usr/bin/ctr");
        assert_eq!(
            import_command(ctr, Path::new("/tmp/a b.tar")).to_string(),
            "/usr/bin/ctr -n k8s.io images import --platform linux/amd64 '/tmp/a b.tar'"
        );
        assert_eq!(
            list_command(ctr).to_string(),
            "/usr/bin/ctr -n k8s.io images ls -q"
        );
    }

    #[test]
    fn the_image_list_must_hold_the_exact_name() {
        let listed = "docker.io/library/postgres:18\ndocker.io/library/pgset-agent:0.1.0\n";
        assert!(lists_image(listed, "docker.io/library/pgset-agent:0.1.0"));
        assert!(!lists_image(listed, "docker.io/library/pgset-agent:0.1"));
        assert!(!lists_image("", "docker.io/library/pgset-agent:0.1.0"));
    }
}
