//! The committed `manifests/` match what the code builds for the default spec, hold no
//! password, and both storage modes pass kubernetes-validate.

use pgset_deploy::render::{ALL_MANIFEST_FILES, manifest_drift, manifest_files, multi_document};
use pgset_spec::{ClusterSpec, StorageMode};
use pgset_tests::{missing_tool, tool, workspace_root};

const FIX: &str = "run `cargo xtask render` (with no pgset.yaml in the working directory and no spec flags: manifests/ holds the default spec)";

#[test]
fn committed_manifests_are_up_to_date() {
    let files =
        manifest_files(&ClusterSpec::default().validated().expect("valid spec")).expect("render");
    let drift = manifest_drift(&workspace_root().join("manifests"), &files);
    assert!(drift.is_empty(), "{}: {FIX}", drift.join("; "));
}

/// Lines of rendered YAML that could carry a secret value.
fn secret_looking_lines(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter(|l| {
            let t = l.trim_start().to_ascii_lowercase();
            t.starts_with("kind: secret")
                || t.starts_with("data:")
                || t.starts_with("stringdata:")
                || (t.contains("password") && !t.starts_with("- name: pgset_secret_dir"))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn rendered_yaml_holds_no_password() {
    for mode in [StorageMode::Shared, StorageMode::Templates] {
        let mut spec = ClusterSpec::default();
        spec.storage.mode = mode;
        let spec = spec.validated().expect("valid spec");
        let yaml = multi_document(&spec).expect("render");
        assert!(
            yaml.contains("kind: StatefulSet"),
            "the check sees the objects"
        );
        let found = secret_looking_lines(&yaml);
        assert!(found.is_empty(), "{mode}: {found:?}");
    }
    let dir = workspace_root().join("manifests");
    for name in ALL_MANIFEST_FILES.iter().filter(|n| n.ends_with(".yaml")) {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let found = secret_looking_lines(&text);
            assert!(found.is_empty(), "{name}: {found:?}");
        }
    }
}

#[test]
fn the_secret_check_catches_a_password() {
    let leaked = "kind: Secret\ndata:\n  superuser-password: czNjcmV0\n";
    assert_eq!(secret_looking_lines(leaked).len(), 3);
}

#[test]
fn both_storage_modes_pass_kubernetes_validate() {
    let test = "both_storage_modes_pass_kubernetes_validate";
    let Some(validate) = tool("kubernetes-validate") else {
        missing_tool(
            test,
            "kubernetes-validate not found: pip install kubernetes-validate",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut paths = Vec::new();
    for (mode, class) in [
        (StorageMode::Shared, None),
        (StorageMode::Templates, None),
        (StorageMode::Templates, Some("fast")),
    ] {
        let mut spec = ClusterSpec::default();
        spec.storage.mode = mode;
        spec.storage.storage_class = class.map(str::to_string);
        let spec = spec.validated().expect("valid spec");
        let path = dir
            .path()
            .join(format!("{mode}-{}.yaml", class.unwrap_or("nfs")));
        std::fs::write(&path, multi_document(&spec).expect("render")).expect("write");
        paths.push(path);
    }
    // The agent run from an image volume instead of the init container's copy.
    let mut spec = ClusterSpec::default();
    spec.agent.delivery = pgset_spec::AgentDelivery::Image;
    let path = dir.path().join("image-delivery.yaml");
    std::fs::write(
        &path,
        multi_document(&spec.validated().expect("valid spec")).expect("render"),
    )
    .expect("write");
    paths.push(path);
    for version in ["1.33.0", "1.36.0", "1.37.0"] {
        let mut args: Vec<std::ffi::OsString> =
            vec!["--strict".into(), "-k".into(), version.into()];
        args.extend(paths.iter().map(|p| p.clone().into_os_string()));
        let out = pgset_command::HostCommand::new(&validate)
            .args(&args)
            .output()
            .expect("run kubernetes-validate");
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            out.status.success() && !text.contains("ERROR") && text.contains("passed"),
            "kubernetes-validate --strict -k {version} failed ({}):\n{text}",
            out.status
        );
    }
}
