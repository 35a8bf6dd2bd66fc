//! The member's TLS files when the env contract names a directory ([`contract::env::TLS_DIR`]):
//! their paths, the check that they are there and their keys private (PostgreSQL and libpq
//! refuse a key others may read), the libpq parameters of a verified connection to the master,
//! and the rustls connector of the agent's own (`verify-full` against the set's CA: the
//! certificate must chain to it and name the host connected to); and [`FileWatch`], which
//! notices new certificate files (a renewed Secret the kubelet swaps in place, a local
//! rotation) so the supervisor has PostgreSQL reload them without a restart, and remembers
//! which files it had reloaded ([`TlsLoaded`], published on the member's pod and in its
//! `/status`: a CA rotation waits until every member has loaded its new trust bundle).

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgset_spec::contract::{self, env, tls as files};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{Error, Result};

/// What [`connector_for_ca`] makes: hand it a host name (`MakeTlsConnect`) to connect.
pub type Connector = MakeRustlsConnect;

/// The TLS files of one member, in the directory the contract names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// The files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles { dir: dir.into() }
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(files::CA_CERT)
    }

    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join(files::SERVER_CERT)
    }

    /// The server certificate's key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join(files::SERVER_KEY)
    }

    /// The replication role's client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join(files::REPLICATION_CERT)
    }

    /// The replication role's client key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join(files::REPLICATION_KEY)
    }

    /// Every file is there and each key is private: owned by this user with no access for
    /// group or others (or owned by root and not readable by others, as PostgreSQL allows).
    /// Otherwise one error naming the file and the fix.
    pub fn check(&self) -> Result<()> {
        let bad = |path: &Path, problem: String| Error::DataDir {
            path: path.to_path_buf(),
            problem,
        };
        for path in [
            self.ca_cert(),
            self.server_cert(),
            self.server_key(),
            self.client_cert(),
            self.client_key(),
        ] {
            let meta = fs::metadata(&path).map_err(|e| {
                bad(
                    &path,
                    format!(
                        "cannot read the TLS file ({e}); {} must hold {}, {}, {}, {} and {}",
                        env::TLS_DIR,
                        files::CA_CERT,
                        files::SERVER_CERT,
                        files::SERVER_KEY,
                        files::REPLICATION_CERT,
                        files::REPLICATION_KEY
                    ),
                )
            })?;
            if path != self.server_key() && path != self.client_key() {
                continue;
            }
            let mode = meta.mode() & 0o777;
            let me = nix::unistd::geteuid().as_raw();
            let private =
                (meta.uid() == me && mode & 0o077 == 0) || (meta.uid() == 0 && mode & 0o037 == 0);
            if !private {
                return Err(bad(
                    &path,
                    format!(
                        "the key is readable by others (mode {mode:o}, owner uid {}); \
                         PostgreSQL refuses it: make it owned by uid {me} with mode 0600",
                        meta.uid()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// libpq parameters for a connection to the master verified against the CA, presenting
    /// the replication role's certificate: replication and the role's `pg_rewind` authenticate
    /// by it (pg_hba's `cert`).
    pub fn libpq_params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("sslmode", "verify-full".to_string()),
            ("sslrootcert", self.ca_cert().display().to_string()),
            ("sslcert", self.client_cert().display().to_string()),
            ("sslkey", self.client_key().display().to_string()),
        ]
    }
}

/// The connector of a client of the set's members: TLS 1.3, the server's certificate verified
/// against the CA certificate `pem` and for the host name (verify-full); `origin` names where
/// the PEM came from in errors.
pub fn connector_for_ca(pem: &[u8], origin: &Path) -> Result<Connector> {
    let config = client_config(pem, origin)?.with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// TLS 1.3 with the servers verified against every certificate of the CA `pem`.
fn client_config(
    pem: &[u8],
    origin: &Path,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
    let path = origin.to_path_buf();
    let unreadable = |problem: String| Error::DataDir {
        path: path.clone(),
        problem,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(pem);
    for cert in certs {
        let cert = cert.map_err(|e| unreadable(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| unreadable(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(unreadable(
            "holds no PEM certificate; it must hold the set's CA certificate".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Failed(format!("TLS 1.3 is not available: {e}")))?
        .with_root_certificates(roots))
}

impl TlsFiles {
    /// The connector of the agent's connections to the master as the replication role: as
    /// [`TlsFiles::connector`], presenting the replication certificate (pg_hba admits the role
    /// over TCP only by it).
    pub fn replication_connector(&self) -> Result<Connector> {
        let ca = self.ca_cert();
        let read = |path: &Path, what: &str| {
            fs::read(path).map_err(|e| Error::DataDir {
                path: path.to_path_buf(),
                problem: format!("cannot read the {what}: {e}"),
            })
        };
        let pem = read(&ca, "CA certificate")?;
        let builder = client_config(&pem, &ca)?;
        let cert_path = self.client_cert();
        let key_path = self.client_key();
        let chain = CertificateDer::pem_slice_iter(&read(&cert_path, "replication certificate")?)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::DataDir {
                path: cert_path.clone(),
                problem: format!("not a PEM certificate: {e}"),
            })?;
        if chain.is_empty() {
            return Err(Error::DataDir {
                path: cert_path.clone(),
                problem: "holds no PEM certificate; it must hold the replication role's client certificate".into(),
            });
        }
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(&read(&key_path, "replication key")?)
                .map_err(|e| Error::DataDir {
                    path: key_path.clone(),
                    problem: format!("not a PEM private key: {e}"),
                })?;
        let config = builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::DataDir {
                path: key_path.clone(),
                problem: format!("the replication certificate and key do not go together: {e}"),
            })?;
        Ok(MakeRustlsConnect::new(config))
    }
}

impl TlsFiles {
    /// A digest of every file's content (read through the kubelet's symlinks), or `None` while
    /// one cannot be read (a swap under way): no decision is taken from a missing file.
    pub fn fingerprint(&self) -> Option<u64> {
        let mut h = DefaultHasher::new();
        for path in [
            self.ca_cert(),
            self.server_cert(),
            self.server_key(),
            self.client_cert(),
            self.client_key(),
        ] {
            fs::read(&path).ok()?.hash(&mut h);
        }
        Some(h.finish())
    }
}

/// The TLS files a member's PostgreSQL was last told to load, by digest
/// ([`contract::tls::LOADED_ANNOTATION`] says how they are made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsLoaded {
    /// The SHA-256 of the CA bundle file.
    pub ca_bundle: String,
    /// The SHA-256 of the server certificate file's bytes then the replication certificate's.
    pub certs: String,
}

impl TlsLoaded {
    /// The JSON object of the annotation and the `/status` detail.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            contract::tls::LOADED_CA_BUNDLE: self.ca_bundle,
            contract::tls::LOADED_CERTS: self.certs,
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl TlsFiles {
    /// The digests of the CA bundle and the certificates as they are now, or `None` while one
    /// cannot be read.
    pub fn digests(&self) -> Option<TlsLoaded> {
        let ca = fs::read(self.ca_cert()).ok()?;
        let mut certs = fs::read(self.server_cert()).ok()?;
        certs.extend(fs::read(self.client_cert()).ok()?);
        Some(TlsLoaded {
            ca_bundle: sha256_hex(&ca),
            certs: sha256_hex(&certs),
        })
    }
}

/// Notices changed TLS files: the first look records them, a later one whose content differs
/// says so once. Looks at most every [`FileWatch::EVERY`]. With [`FileWatch::look`] it also
/// keeps which files PostgreSQL was told to load and whether that was published.
#[derive(Debug, Default)]
pub struct FileWatch {
    seen: Option<u64>,
    looked: Option<Instant>,
    again: bool,
    loaded: Option<TlsLoaded>,
    published: Option<TlsLoaded>,
}

impl FileWatch {
    /// How often the files are read.
    pub const EVERY: Duration = Duration::from_secs(2);

    /// Whether a look is due.
    pub fn due(&self) -> bool {
        self.looked.is_none_or(|t| t.elapsed() >= Self::EVERY)
    }

    /// Reads the files: `true` when their content differs from the last readable look (never
    /// on the first, nor while a file is unreadable).
    pub fn changed(&mut self, files: &TlsFiles) -> bool {
        self.looked = Some(Instant::now());
        let Some(now) = files.fingerprint() else {
            return false;
        };
        let before = self.seen.replace(now);
        std::mem::take(&mut self.again) || before.is_some_and(|b| b != now)
    }

    /// The change told was not acted on: the next readable look tells it again.
    pub fn again(&mut self) {
        self.again = true;
    }

    /// Reads the files: the digests to have PostgreSQL load (read before it is told to, so
    /// what it loads is never older than what is published) when they changed or nothing was
    /// loaded yet (the first look: a file may have changed since postgres started); `None`
    /// when nothing is to do or a file cannot be read (the next look tries again).
    pub fn look(&mut self, files: &TlsFiles) -> Option<TlsLoaded> {
        let changed = self.changed(files);
        if !changed && self.loaded.is_some() {
            return None;
        }
        let digests = files.digests();
        if digests.is_none() && changed {
            self.again();
        }
        digests
    }

    /// PostgreSQL was told to load the files of `digests`.
    pub fn reloaded(&mut self, digests: TlsLoaded) {
        self.loaded = Some(digests);
    }

    /// What PostgreSQL was last told to load.
    pub fn loaded(&self) -> Option<&TlsLoaded> {
        self.loaded.as_ref()
    }

    /// What was loaded and not published yet.
    pub fn unpublished(&self) -> Option<TlsLoaded> {
        self.loaded
            .clone()
            .filter(|l| self.published.as_ref() != Some(l))
    }

    /// `digests` were published.
    pub fn published(&mut self, digests: TlsLoaded) {
        self.published = Some(digests);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_watch_tells_a_changed_file_once_and_nothing_while_one_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let t = TlsFiles::new(tmp.path());
        for f in [
            files::CA_CERT,
            files::SERVER_CERT,
            files::SERVER_KEY,
            files::REPLICATION_CERT,
            files::REPLICATION_KEY,
        ] {
            write(tmp.path(), f, "a", 0o600);
        }
        let mut w = FileWatch::default();
        assert!(w.due());
        assert!(!w.changed(&t), "the first look only records");
        assert!(!w.due());
        assert!(!w.changed(&t));
        // A kubelet-style swap: a new directory, the names through a symlink.
        fs::remove_file(t.server_cert()).unwrap();
        assert!(!w.changed(&t), "a missing file decides nothing");
        write(tmp.path(), files::SERVER_CERT, "b", 0o600);
        assert!(w.changed(&t));
        assert!(!w.changed(&t), "told once");
        write(tmp.path(), files::SERVER_KEY, "c", 0o600);
        assert!(w.changed(&t));
        w.again();
        assert!(w.changed(&t), "told again after a failed reload");
        assert!(!w.changed(&t));
    }

    #[test]
    fn the_first_look_and_every_change_are_loaded_once_and_published_once() {
        let tmp = tempfile::tempdir().unwrap();
        let t = TlsFiles::new(tmp.path());
        for f in [
            files::CA_CERT,
            files::SERVER_CERT,
            files::SERVER_KEY,
            files::REPLICATION_CERT,
            files::REPLICATION_KEY,
        ] {
            write(tmp.path(), f, f, 0o600);
        }
        let mut w = FileWatch::default();
        // The first look: load what is there (postgres may have started on older files).
        let first = w.look(&t).expect("the first look loads");
        assert_eq!(first.ca_bundle, sha256_hex(files::CA_CERT.as_bytes()));
        assert_eq!(
            first.certs,
            sha256_hex(format!("{}{}", files::SERVER_CERT, files::REPLICATION_CERT).as_bytes())
        );
        assert_eq!(w.unpublished(), None, "nothing loaded yet");
        w.reloaded(first.clone());
        assert_eq!(w.loaded(), Some(&first));
        assert_eq!(w.unpublished(), Some(first.clone()));
        w.published(first.clone());
        assert_eq!(w.unpublished(), None);
        assert_eq!(w.look(&t), None, "nothing changed");
        // A new bundle: loaded again, a new digest to publish.
        write(tmp.path(), files::CA_CERT, "two CAs", 0o644);
        let second = w.look(&t).expect("a change loads");
        assert_ne!(second.ca_bundle, first.ca_bundle);
        assert_eq!(second.certs, first.certs);
        // Not loaded (postgres refused): nothing new is claimed, the next look tells it again.
        w.again();
        assert_eq!(w.loaded(), Some(&first));
        assert_eq!(w.look(&t), Some(second.clone()));
        w.reloaded(second.clone());
        assert_eq!(w.unpublished(), Some(second));
        assert_eq!(
            w.loaded().unwrap().to_json()[contract::tls::LOADED_CA_BUNDLE],
            sha256_hex(b"two CAs")
        );
    }

    #[test]
    fn the_agent_trusts_a_server_of_either_ca_in_a_bundle_of_two() {
        // Two CAs made as pgset makes them (same name, other keys): the agent's rustls roots
        // from the bundle verify a certificate of each, and not one of a third CA.
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{ServerName, UnixTime};
        let t = pgset_tls::now();
        let names = pgset_tls::local_names();
        let (old, new, other) = (
            pgset_tls::make_ca("db", t).unwrap(),
            pgset_tls::make_ca("db", t).unwrap(),
            pgset_tls::make_ca("db", t).unwrap(),
        );
        let bundle = pgset_tls::make_bundle(&[&old.cert_pem, &new.cert_pem]);
        let server = |ca: &pgset_tls::Issued| {
            pgset_tls::issue_server(ca, &names, t)
                .unwrap()
                .cert_pem
                .into_bytes()
        };
        let certs = [server(&old), server(&new), server(&other)];
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        assert_eq!(roots.len(), 2);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let verify = |pem: &[u8]| {
            let cert = CertificateDer::from_pem_slice(pem).unwrap();
            verifier.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        };
        verify(&certs[0]).expect("a server of the old CA is trusted");
        verify(&certs[1]).expect("a server of the new CA is trusted");
        assert!(verify(&certs[2]).is_err(), "a third CA is not");
        // The connector takes the same bundle.
        connector_for_ca(bundle.as_bytes(), Path::new("ca.crt")).unwrap();
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn missing_files_and_readable_keys_are_refused_with_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let t = TlsFiles::new(tmp.path());
        let e = t.check().unwrap_err().to_string();
        assert!(e.contains("ca.crt") && e.contains("PGSET_TLS_DIR"), "{e}");
        for f in [files::CA_CERT, files::SERVER_CERT, files::REPLICATION_CERT] {
            write(tmp.path(), f, "x", 0o644);
        }
        write(tmp.path(), files::SERVER_KEY, "k", 0o644);
        write(tmp.path(), files::REPLICATION_KEY, "k", 0o600);
        let e = t.check().unwrap_err().to_string();
        assert!(e.contains("server.key") && e.contains("mode 0600"), "{e}");
        fs::set_permissions(t.server_key(), fs::Permissions::from_mode(0o600)).unwrap();
        t.check().unwrap();
        // Not a certificate: the connector says which file; then the client certificate.
        let e = t.replication_connector().err().unwrap().to_string();
        assert!(e.contains("ca.crt"), "{e}");
        let now = pgset_tls::now();
        let ca = pgset_tls::make_ca("db", now).unwrap();
        fs::write(t.ca_cert(), &ca.cert_pem).unwrap();
        let e = t.replication_connector().err().unwrap().to_string();
        assert!(e.contains("replication.crt"), "{e}");
        let leaf =
            pgset_tls::issue_client(&ca, pgset_spec::contract::REPLICATION_USER, now).unwrap();
        fs::write(t.client_cert(), &leaf.cert_pem).unwrap();
        fs::write(t.client_key(), &leaf.key_pem).unwrap();
        t.replication_connector().unwrap();
        // From a PEM read elsewhere: the error names where it came from.
        let e = connector_for_ca(b"junk", Path::new("ConfigMap db-ca-cert"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ConfigMap db-ca-cert"), "{e}");
    }

    #[test]
    fn libpq_verifies_the_master_and_always_names_the_client_certificate() {
        let t = TlsFiles::new("/tls");
        assert_eq!(
            t.libpq_params(),
            vec![
                ("sslmode", "verify-full".to_string()),
                ("sslrootcert", "/tls/ca.crt".to_string()),
                ("sslcert", "/tls/replication.crt".to_string()),
                ("sslkey", "/tls/replication.key".to_string()),
            ]
        );
    }
}
