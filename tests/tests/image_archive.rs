//! The agent image archive made by `cargo xtask image`, checked with real OCI tools: skopeo reads
//! its platform, entrypoint and user, umoci unpacks it and the unpacked static executable prints
//! the pgset version; the blobs match their digests; the same sources give the same bytes and a
//! second run changes nothing.
//!
//! The xtask binary and the static release agent are built once per run (the agent in the
//! workspace's `target/image`, incremental across runs) and shared by the tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use pgset_command::HostCommand;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// What a command printed and how it ended.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Whether a variable is one `cargo test` sets for this test's package; a nested cargo that
/// inherited them would hand them to build scripts and rebuild what the outer build made.
fn is_test_package_var(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
        )
}

/// Runs a command with captured output, logging the command line, without the variables of
/// this test's package.
fn run(program: impl AsRef<Path>, args: &[&str], dir: &Path) -> Ran {
    let program = program.as_ref();
    let command = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| is_test_package_var(name))
        .fold(HostCommand::new(program).args(args), |c, name| {
            c.env_remove(name)
        });
    let output = command.dir(dir).output().unwrap_or_else(|e| panic!("{e}"));
    Ran {
        success: output.success(),
        stdout: output.stdout,
        stderr: output.stderr,
    }
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(program: impl AsRef<Path>, args: &[&str], dir: &Path) -> String {
    let ran = run(program.as_ref(), args, dir);
    assert!(
        ran.success,
        "{} {} failed:\n{}\n{}",
        program.as_ref().display(),
        args.join(" "),
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}

/// The shared results of building once.
struct Built {
    /// The `pgset` executable (what `cargo xtask image` runs).
    xtask: PathBuf,
    /// A directory owned by this test run.
    dir: PathBuf,
    /// The archive of the default image.
    archive: PathBuf,
    /// What the first `xtask image` run printed.
    first_stdout: String,
}

/// Builds the pgset binary and, through it, the default archive. Run once per test process.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let workspace = pgset_tests::workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let messages = run_ok(
            &cargo,
            &[
                "build",
                "-p",
                "pgset-cli",
                "--bin",
                "pgset",
                "--message-format=json-render-diagnostics",
            ],
            &workspace,
        );
        // `cargo xtask image` runs this binary.
        let xtask = messages
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "pgset")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo build -p pgset-cli names the pgset executable");

        // A directory of this test's own, emptied at the start of each run.
        let dir = workspace.join("target").join("image").join("archive-test");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("empty the test directory");
        }
        std::fs::create_dir_all(&dir).expect("create the test directory");

        let archive = dir.join("default.oci.tar");
        let first_stdout = xtask_image(&xtask, &dir, &["--out", path_str(&archive)]);
        Built {
            xtask,
            dir,
            archive,
            first_stdout,
        }
    })
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `xtask image ARGS` from `dir` (where no pgset.yaml exists, so the spec's defaults
/// apply); returns its stdout.
fn xtask_image(xtask: &Path, dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["image"];
    all.extend_from_slice(args);
    run_ok(xtask, &all, dir)
}

/// `sha256:<hex>` of `bytes`.
fn digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The regular files of a tar archive, by path.
fn tar_files(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut archive = tar::Archive::new(bytes);
    let mut files = std::collections::BTreeMap::new();
    for entry in archive.entries().expect("a tar archive") {
        let mut entry = entry.expect("a tar entry");
        if entry.header().entry_type().is_file() {
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(path, data);
        }
    }
    files
}

fn blob<'a>(files: &'a std::collections::BTreeMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
    let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    files
        .get(&path)
        .unwrap_or_else(|| panic!("the archive has no blob {path}"))
}

#[test]
fn skopeo_reads_platform_entrypoint_user_and_version() {
    let Some(skopeo) = pgset_tests::tool("skopeo") else {
        pgset_tests::missing_tool(
            "skopeo_reads_platform_entrypoint_user_and_version",
            "skopeo is not installed (apt-get install skopeo)",
        );
        return;
    };
    let built = built();
    let source = format!("oci-archive:{}", built.archive.display());
    let inspect: Value =
        serde_json::from_str(&run_ok(&skopeo, &["inspect", &source], &built.dir)).unwrap();
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(
        inspect["Labels"]["org.opencontainers.image.version"],
        pgset_spec::VERSION
    );
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(1));

    let config: Value = serde_json::from_str(&run_ok(
        &skopeo,
        &["inspect", "--config", &source],
        &built.dir,
    ))
    .unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!([pgset_spec::contract::AGENT_IMAGE_BINARY])
    );
    let user = config["config"]["User"].as_str().expect("a user is set");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("the image's user {user:?} is a numeric uid[:gid]"));
    assert_ne!(uid, 0, "the image runs as a non-root user, not {user:?}");

    // The tag recorded in the index is the version: skopeo finds the image by it.
    let tagged = format!("{source}:{}", pgset_spec::VERSION);
    let by_tag: Value =
        serde_json::from_str(&run_ok(&skopeo, &["inspect", &tagged], &built.dir)).unwrap();
    assert_eq!(by_tag["Digest"], inspect["Digest"]);
}

#[test]
fn umoci_unpacks_a_static_agent_that_prints_its_version() {
    let Some(umoci) = pgset_tests::tool("umoci") else {
        pgset_tests::missing_tool(
            "umoci_unpacks_a_static_agent_that_prints_its_version",
            "umoci is not installed (apt-get install umoci)",
        );
        return;
    };
    let built = built();
    let layout = built.dir.join("layout");
    let bundle = built.dir.join("bundle");
    std::fs::create_dir_all(&layout).unwrap();
    let bytes = std::fs::read(&built.archive).unwrap();
    tar::Archive::new(bytes.as_slice())
        .unpack(&layout)
        .expect("extract the archive into an OCI layout directory");
    let image = format!("{}:{}", layout.display(), pgset_spec::VERSION);
    run_ok(
        &umoci,
        &["unpack", "--rootless", "--image", &image, path_str(&bundle)],
        &built.dir,
    );

    let executable = bundle
        .join("rootfs")
        .join(pgset_spec::contract::AGENT_IMAGE_BINARY.trim_start_matches('/'));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&executable).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o755, "the agent is executable by every user");
    let printed = run_ok(&executable, &["--version"], &built.dir);
    assert!(
        printed.split_whitespace().any(|w| w == pgset_spec::VERSION),
        "the unpacked agent printed {printed:?}, not version {}",
        pgset_spec::VERSION
    );

    // Static: `file` reports "statically linked" or "static-pie linked", never an interpreter.
    let Some(file) = pgset_tests::tool("file") else {
        pgset_tests::missing_tool(
            "umoci_unpacks_a_static_agent_that_prints_its_version",
            "file is not installed (apt-get install file): the static check is skipped",
        );
        return;
    };
    let kind = run_ok(&file, &["-b", path_str(&executable)], &built.dir);
    assert!(
        kind.contains("static") && !kind.contains("interpreter"),
        "the agent in the image is not static: {kind}"
    );
}

#[test]
fn every_blob_matches_the_digest_and_size_that_name_it() {
    let built = built();
    let files = tar_files(&std::fs::read(&built.archive).unwrap());
    let layout: Value = serde_json::from_slice(&files["oci-layout"]).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    let entry = &manifests[0];
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        pgset_spec::default_agent_image()
    );
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        pgset_spec::VERSION
    );

    let manifest_digest = entry["digest"].as_str().unwrap();
    let manifest_bytes = blob(&files, manifest_digest);
    assert_eq!(digest(manifest_bytes), manifest_digest);
    assert_eq!(entry["size"], manifest_bytes.len());
    let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();

    let layer = &manifest["layers"][0];
    let layer_bytes = blob(&files, layer["digest"].as_str().unwrap());
    assert_eq!(digest(layer_bytes), layer["digest"]);
    assert_eq!(layer["size"], layer_bytes.len());
    let config_bytes = blob(&files, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(digest(config_bytes), manifest["config"]["digest"]);
    let config: Value = serde_json::from_slice(config_bytes).unwrap();

    let mut layer_tar = Vec::new();
    std::io::Read::read_to_end(
        &mut gunzip_with_system_gzip(layer_bytes).as_slice(),
        &mut layer_tar,
    )
    .unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], digest(&layer_tar));
    let layer_files = tar_files(&layer_tar);
    assert_eq!(
        layer_files.keys().collect::<Vec<_>>(),
        [pgset_spec::contract::AGENT_IMAGE_BINARY.trim_start_matches('/')]
    );
    assert!(
        built.first_stdout.contains(manifest_digest),
        "the task reports the image digest: {}",
        built.first_stdout
    );
}

/// Decompresses a gzip stream with the system's `gzip`, independent of the packer's library.
fn gunzip_with_system_gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    // Bytes, not text: the decompressed layer is a tar archive.
    let mut reader = HostCommand::new("gzip")
        .arg("-dc")
        .stdin(bytes)
        .quiet()
        .start_reader()
        .expect("start gzip -dc");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read gzip -dc");
    let ended = reader.try_wait().expect("wait for gzip -dc");
    assert!(
        ended.is_some_and(|o| o.status.success()),
        "gzip -dc decompresses the layer"
    );
    out
}

#[test]
fn the_same_sources_give_the_same_archive_and_a_rerun_changes_nothing() {
    let built = built();
    let again = built.dir.join("again.oci.tar");
    xtask_image(&built.xtask, &built.dir, &["--out", path_str(&again)]);
    assert!(
        std::fs::read(&again).unwrap() == std::fs::read(&built.archive).unwrap(),
        "two builds of the same sources differ"
    );

    let before = std::fs::metadata(&built.archive)
        .unwrap()
        .modified()
        .unwrap();
    let rerun = xtask_image(
        &built.xtask,
        &built.dir,
        &["--out", path_str(&built.archive)],
    );
    assert!(rerun.starts_with("unchanged "), "{rerun}");
    let after = std::fs::metadata(&built.archive)
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a rerun leaves the archive alone");
}

#[test]
fn agent_image_names_the_image_and_keeps_its_content() {
    let built = built();
    let out = built.dir.join("renamed.oci.tar");
    xtask_image(
        &built.xtask,
        &built.dir,
        &[
            "--out",
            path_str(&out),
            "--agent-image",
            "registry.lab:5000/db/pgset-agent:dev",
        ],
    );
    let renamed = tar_files(&std::fs::read(&out).unwrap());
    let default = tar_files(&std::fs::read(&built.archive).unwrap());
    let entry = |files: &std::collections::BTreeMap<String, Vec<u8>>| -> Value {
        serde_json::from_slice::<Value>(&files["index.json"]).unwrap()["manifests"][0].clone()
    };
    let (renamed_entry, default_entry) = (entry(&renamed), entry(&default));
    assert_eq!(
        renamed_entry["annotations"]["io.containerd.image.name"],
        "registry.lab:5000/db/pgset-agent:dev"
    );
    assert_eq!(
        renamed_entry["annotations"]["org.opencontainers.image.ref.name"],
        "dev"
    );
    assert_eq!(renamed_entry["digest"], default_entry["digest"]);
}

#[test]
fn dry_run_writes_nothing_and_import_without_ctr_says_what_to_do() {
    let built = built();
    let out = built.dir.join("dry-run.oci.tar");
    let printed = xtask_image(
        &built.xtask,
        &built.dir,
        &["--dry-run", "--out", path_str(&out)],
    );
    assert!(printed.contains("crt-static"), "{printed}");
    assert!(printed.contains(path_str(&out)), "{printed}");
    assert!(!out.exists(), "a dry run writes no archive");

    if pgset_tests::tool("ctr").is_some() {
        eprintln!("ctr is installed here: the missing-ctr error is not checked");
        return;
    }
    let ran = run(
        &built.xtask,
        &["image", "--import", "--out", path_str(&out)],
        &built.dir,
    );
    assert!(!ran.success, "--import without ctr fails");
    assert!(
        ran.stderr.contains("ctr") && ran.stderr.contains("node"),
        "{}",
        ran.stderr
    );
    assert!(
        !out.exists(),
        "nothing is built or written when the import cannot happen"
    );
}
