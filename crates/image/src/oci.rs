//! The OCI image archive of the agent, packed in memory: one gzip layer holding the static
//! executable, the image config, the manifest, `index.json` naming the image and `oci-layout`,
//! all in one tar. Timestamps, owners and entry order are fixed, so the same executable and name
//! always give the same bytes.

use std::collections::BTreeMap;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use pgset_spec::contract::AGENT_IMAGE_BINARY;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::reference::ImageName;

/// Media type of the image index (`index.json`).
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of the image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a gzip-compressed layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Annotation naming the tag of a manifest in an OCI layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation naming the full reference an import into containerd records.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// Label carrying the version in the image config.
pub const LABEL_VERSION: &str = "org.opencontainers.image.version";
/// Label carrying the title in the image config.
pub const LABEL_TITLE: &str = "org.opencontainers.image.title";
/// Architecture of the image (Go's name for x86-64).
pub const ARCHITECTURE: &str = "amd64";
/// Operating system of the image.
pub const OS: &str = "linux";
/// The user the image runs as unless the pod says otherwise: non-root, no home, no shell.
pub const IMAGE_USER: &str = "65532:65532";
/// Modification time of every entry and creation time of the image: the epoch, so rebuilding
/// the same executable gives the same archive.
pub const FIXED_MTIME: u64 = 0;
/// [`FIXED_MTIME`] as the config's `created` timestamp.
pub const FIXED_CREATED: &str = "1970-01-01T00:00:00Z";

/// What goes into the image.
#[derive(Debug, Clone, Copy)]
pub struct ImageContents<'a> {
    /// The static agent executable.
    pub executable: &'a [u8],
    /// The name the image is imported under.
    pub name: &'a ImageName,
    /// The pgset version (a label of the image).
    pub version: &'a str,
}

/// A content descriptor: media type, digest and size of a blob, as manifests and the index
/// refer to blobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the blob.
    pub media_type: String,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Platform of the manifest a descriptor in the index points to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (the names of the image, in the index).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Platform of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// CPU architecture.
    pub architecture: String,
    /// Operating system.
    pub os: String,
}

/// The packed archive and what it holds.
#[derive(Debug, Clone)]
pub struct OciArchive {
    /// The tar archive (an OCI image layout).
    pub bytes: Vec<u8>,
    /// The manifest, as `index.json` refers to it.
    pub manifest: Descriptor,
    /// The layer.
    pub layer: Descriptor,
}

/// A blob in the layout.
struct Blob {
    descriptor: Descriptor,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            descriptor: Descriptor {
                media_type: media_type.to_owned(),
                digest: sha256_digest(&bytes),
                size: bytes.len() as u64,
                platform: None,
                annotations: BTreeMap::new(),
            },
            bytes,
        }
    }
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in hash.iter() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImageConfig<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    config: ContainerConfig<'a>,
    rootfs: RootFs<'a>,
    history: [History<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig<'a> {
    user: &'a str,
    entrypoint: [&'a str; 1],
    working_dir: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: [&'a str; 1],
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
    created_by: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: &'a Descriptor,
    layers: [&'a Descriptor; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: [&'a Descriptor; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Layout {
    image_layout_version: &'static str,
}

/// Appends a regular file or a directory (`data` is `None`) owned by root with the fixed mtime.
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path)?;
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("root")?;
    header.set_groupname("root")?;
    header.set_mtime(FIXED_MTIME);
    match data {
        Some(data) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            header.set_cksum();
            tar.append(&header, data)
        }
        None => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_cksum();
            tar.append(&header, std::io::empty())
        }
    }
}

/// The uncompressed layer: the executable at [`AGENT_IMAGE_BINARY`], mode 0755, owned by root.
pub fn layer_tar(executable: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let path = AGENT_IMAGE_BINARY.trim_start_matches('/');
    append_entry(&mut tar, path, 0o755, Some(executable))?;
    tar.into_inner()
}

/// Gzip with a fixed header (no name, mtime 0), so equal input gives equal output.
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

fn json<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(std::io::Error::other)
}

/// Packs the image archive.
pub fn pack(contents: ImageContents<'_>) -> std::io::Result<OciArchive> {
    let layer_tar = layer_tar(contents.executable)?;
    let diff_id = sha256_digest(&layer_tar);
    let layer = Blob::new(MEDIA_TYPE_LAYER_GZIP, gzip(&layer_tar)?);
    drop(layer_tar);

    let created_by = format!(
        "pgset image ({} {})",
        pgset_spec::contract::AGENT_BIN,
        contents.version
    );
    let config = ImageConfig {
        created: FIXED_CREATED,
        architecture: ARCHITECTURE,
        os: OS,
        config: ContainerConfig {
            user: IMAGE_USER,
            entrypoint: [AGENT_IMAGE_BINARY],
            working_dir: "/",
            labels: BTreeMap::from([
                (LABEL_TITLE, pgset_spec::contract::AGENT_BIN),
                (LABEL_VERSION, contents.version),
            ]),
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: [&diff_id],
        },
        history: [History {
            created: FIXED_CREATED,
            created_by: &created_by,
        }],
    };
    let config = Blob::new(MEDIA_TYPE_CONFIG, json(&config)?);

    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST,
        config: &config.descriptor,
        layers: [&layer.descriptor],
    };
    let manifest = Blob::new(MEDIA_TYPE_MANIFEST, json(&manifest)?);

    let mut in_index = manifest.descriptor.clone();
    in_index.platform = Some(Platform {
        architecture: ARCHITECTURE.to_owned(),
        os: OS.to_owned(),
    });
    in_index.annotations = BTreeMap::from([
        (
            ANNOTATION_CONTAINERD_NAME.to_owned(),
            contents.name.full.clone(),
        ),
        (ANNOTATION_REF_NAME.to_owned(), contents.name.tag.clone()),
    ]);
    let index = json(&Index {
        schema_version: 2,
        media_type: MEDIA_TYPE_INDEX,
        manifests: [&in_index],
    })?;
    let layout = json(&Layout {
        image_layout_version: "1.0.0",
    })?;

    let mut blobs = [&config, &manifest, &layer];
    blobs.sort_by(|a, b| a.descriptor.digest.cmp(&b.descriptor.digest));
    let mut tar = tar::Builder::new(Vec::new());
    append_entry(&mut tar, "oci-layout", 0o644, Some(&layout))?;
    append_entry(&mut tar, "index.json", 0o644, Some(&index))?;
    append_entry(&mut tar, "blobs/", 0o755, None)?;
    append_entry(&mut tar, "blobs/sha256/", 0o755, None)?;
    for blob in blobs {
        let hex = blob.descriptor.digest.trim_start_matches("sha256:");
        append_entry(
            &mut tar,
            &format!("blobs/sha256/{hex}"),
            0o644,
            Some(&blob.bytes),
        )?;
    }
    let bytes = tar.into_inner()?;

    Ok(OciArchive {
        bytes,
        manifest: in_index,
        layer: layer.descriptor,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use serde_json::{Value, json};

    use super::*;

    fn name() -> ImageName {
        ImageName::parse("docker.io/library/pgset-agent:9.8.7").unwrap()
    }

    fn pack_sample(executable: &[u8]) -> OciArchive {
        pack(ImageContents {
            executable,
            name: &name(),
            version: "9.8.7",
        })
        .unwrap()
    }

    /// The archive's entries: path → (mode, uid, mtime, content).
    fn entries(bytes: &[u8]) -> Vec<(String, u32, u64, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                (
                    entry.path().unwrap().to_string_lossy().into_owned(),
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.mtime().unwrap(),
                    data,
                )
            })
            .collect()
    }

    fn blob<'a>(entries: &'a [(String, u32, u64, u64, Vec<u8>)], digest: &str) -> &'a [u8] {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        &entries
            .iter()
            .find(|e| e.0 == path)
            .unwrap_or_else(|| panic!("no blob {path}"))
            .4
    }

    #[test]
    fn digests_are_sha256_in_lowercase_hex() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_layout_has_its_files_and_every_blob_matches_its_name() {
        let archive = pack_sample(b"\x7fELF pretend executable");
        let entries = entries(&archive.bytes);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths[..4],
            ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        );
        assert_eq!(paths.len(), 7);
        for (path, mode, uid, mtime, data) in &entries {
            assert_eq!((*uid, *mtime), (0, FIXED_MTIME), "{path}");
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256_digest(data), format!("sha256:{hex}"));
                assert_eq!(*mode, 0o644);
            }
        }
        let layout: Value = serde_json::from_slice(&entries[0].4).unwrap();
        assert_eq!(layout, json!({"imageLayoutVersion": "1.0.0"}));
    }

    #[test]
    fn the_index_names_the_image_and_points_at_the_manifest() {
        let archive = pack_sample(b"binary");
        let entries = entries(&archive.bytes);
        let index: Value = serde_json::from_slice(&entries[1].4).unwrap();
        let manifest_bytes = blob(&entries, &archive.manifest.digest);
        assert_eq!(
            index,
            json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_INDEX,
                "manifests": [{
                    "mediaType": MEDIA_TYPE_MANIFEST,
                    "digest": sha256_digest(manifest_bytes),
                    "size": manifest_bytes.len(),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": "docker.io/library/pgset-agent:9.8.7",
                        "org.opencontainers.image.ref.name": "9.8.7",
                    },
                }],
            })
        );
    }

    #[test]
    fn the_manifest_and_config_describe_one_layer_running_the_agent() {
        let executable = b"\x7fELF the agent".repeat(1000);
        let archive = pack_sample(&executable);
        let entries = entries(&archive.bytes);
        let manifest: Value =
            serde_json::from_slice(blob(&entries, &archive.manifest.digest)).unwrap();
        let layer_bytes = blob(&entries, &archive.layer.digest);
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config_bytes = blob(&entries, config_digest);
        assert_eq!(
            manifest,
            json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_MANIFEST,
                "config": {
                    "mediaType": MEDIA_TYPE_CONFIG,
                    "digest": sha256_digest(config_bytes),
                    "size": config_bytes.len(),
                },
                "layers": [{
                    "mediaType": MEDIA_TYPE_LAYER_GZIP,
                    "digest": sha256_digest(layer_bytes),
                    "size": layer_bytes.len(),
                }],
            })
        );

        let mut layer_tar = Vec::new();
        flate2::read::GzDecoder::new(layer_bytes)
            .read_to_end(&mut layer_tar)
            .unwrap();
        let diff_id = sha256_digest(&layer_tar);
        let files = super::tests::entries(&layer_tar);
        assert_eq!(files.len(), 1);
        let (path, mode, uid, mtime, data) = &files[0];
        assert_eq!(
            (path.as_str(), *mode, *uid, *mtime),
            ("pgset-agent", 0o755, 0, 0)
        );
        assert_eq!(data, &executable);

        let config: Value = serde_json::from_slice(config_bytes).unwrap();
        assert_eq!(
            config,
            json!({
                "created": "1970-01-01T00:00:00Z",
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "User": "65532:65532",
                    "Entrypoint": ["/pgset-agent"],
                    "WorkingDir": "/",
                    "Labels": {
                        "org.opencontainers.image.title": "pgset-agent",
                        "org.opencontainers.image.version": "9.8.7",
                    },
                },
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{
                    "created": "1970-01-01T00:00:00Z",
                    "created_by": "pgset image (pgset-agent 9.8.7)",
                }],
            })
        );
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_and_another_input_does_not() {
        let first = pack_sample(b"one executable");
        let again = pack_sample(b"one executable");
        assert_eq!(first.bytes, again.bytes);
        let other = pack_sample(b"another executable");
        assert_ne!(first.bytes, other.bytes);
        assert_ne!(first.layer.digest, other.layer.digest);
        let renamed = pack(ImageContents {
            executable: b"one executable",
            name: &ImageName::parse("pgset-agent:dev").unwrap(),
            version: "9.8.7",
        })
        .unwrap();
        assert_eq!(renamed.manifest.digest, first.manifest.digest);
        assert_ne!(renamed.bytes, first.bytes);
    }
}
