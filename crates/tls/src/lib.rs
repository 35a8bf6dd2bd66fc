//! The set's TLS material: a CA that pgset makes and keeps (its key is never printed), a server
//! certificate naming every host a client uses to reach a member, and a client certificate for
//! the replication role (CN = [`contract::REPLICATION_USER`]), all ECDSA P-256, which
//! PostgreSQL's OpenSSL and rustls both accept; whether a certificate must be renewed; and a
//! directory of these files kept up to date ([`ensure_dir`], file names in [`contract::tls`]).
//!
//! Making certificates is pure ([`make_ca`], [`issue_server`], [`issue_client`]); only
//! [`ensure_dir`] touches files, and it rewrites nothing that is still valid.
//!
//! The CA file every member and client reads (`ca.crt`) is a trust bundle: one CA, or during a
//! CA rotation the old and the new one. The signing CA is the one whose key is kept next to
//! it ([`signing_ca`]: matched by public key, not by position). A rotation of a directory goes
//! in three steps, each run only once every member is known to have loaded the previous one:
//! [`begin_ca_rotation`] (the new CA joins the bundle, its key kept apart as
//! [`CA_NEXT_KEY`]; the leaves stay the old CA's), [`switch_to_next_ca`] (the leaves are
//! reissued by the new CA, whose key becomes the signing key) and [`retire_old_cas`] (the
//! bundle keeps the signing CA alone). [`digest`] names what a member loaded.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pgset_spec::contract::{self, tls as files};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// How long a server or client certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::days(90);
/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// A certificate this close to its end is renewed.
pub const RENEW_BEFORE: Duration = Duration::days(7);
/// The CA certificate's common name.
pub const CA_COMMON_NAME: &str = "pgset CA";
/// A CA this close to its end is replaced by a rotation with overlap (old and new CA trusted
/// together until every leaf is the new CA's), long before any leaf it signed could outlive it.
pub const CA_RENEW_BEFORE: Duration = Duration::days(180);
/// A certificate this close to its end is renewed by the cluster's renewal job (run daily):
/// well before [`RENEW_BEFORE`], so a few missed runs still leave it time.
pub const AUTO_RENEW_BEFORE: Duration = Duration::days(30);
/// During a cluster's CA rotation: the CA Secret's key of the new CA's certificate.
pub const NEXT_CA_CERT_KEY: &str = "next.crt";
/// During a cluster's CA rotation: the CA Secret's key of the new CA's key.
pub const NEXT_CA_KEY_KEY: &str = "next.key";
/// During a CA rotation of a directory: the new CA's key, kept apart from the signing key
/// (`ca.key`) until every member trusts the new CA.
pub const CA_NEXT_KEY: &str = "ca-next.key";

/// The SHA-256 of `bytes`, lowercase hex: how a member names the TLS files it has loaded (the
/// CA bundle's bytes; the server and replication certificates' bytes, one after the other),
/// and how a rotation names the files it waits for.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest of a server and a replication certificate as a member names them loaded.
pub fn certs_digest(server_cert_pem: &str, replication_cert_pem: &str) -> String {
    digest(
        [server_cert_pem.as_bytes(), replication_cert_pem.as_bytes()]
            .concat()
            .as_slice(),
    )
}

/// The PEM certificates of a bundle, each ending in a newline, in order.
pub fn split_bundle(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let end = start + end + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// A bundle of `certs` (PEM), in order, each once.
pub fn make_bundle<S: AsRef<str>>(certs: &[S]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for c in certs.iter().flat_map(|c| split_bundle(c.as_ref())) {
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    seen.concat()
}

/// Whether the bundle holds the certificate `cert_pem` (compared as PEM blocks, whatever
/// surrounds them).
pub fn bundle_has(bundle: &str, cert_pem: &str) -> bool {
    let want = split_bundle(cert_pem);
    want.len() == 1 && split_bundle(bundle).contains(&want[0])
}

/// Whether the certificate `cert_pem` was signed by the CA `ca_pem` (its signature verifies
/// with the CA's public key; the names alone cannot tell an old CA from its successor).
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    use x509_parser::prelude::*;
    let (Ok((_, cert)), Ok((_, ca))) = (
        parse_x509_pem(cert_pem.as_bytes()),
        parse_x509_pem(ca_pem.as_bytes()),
    ) else {
        return false;
    };
    let (Ok(cert), Ok(ca)) = (cert.parse_x509(), ca.parse_x509()) else {
        return false;
    };
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The certificate of `bundle` whose public key is `key_pem`'s: the CA that key signs as.
pub fn matching_cert(bundle: &str, key_pem: &str) -> Option<String> {
    use x509_parser::prelude::*;
    let key = KeyPair::from_pem(key_pem).ok()?;
    split_bundle(bundle).into_iter().find(|c| {
        parse_x509_pem(c.as_bytes())
            .ok()
            .and_then(|(_, p)| {
                p.parse_x509().ok().map(|x| {
                    x.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
                })
            })
            .unwrap_or(false)
    })
}

/// What went wrong, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate could not be made.
    #[error("cannot make the {what}: {source}")]
    Make {
        /// Which certificate.
        what: &'static str,
        /// Why.
        source: rcgen::Error,
    },
    /// A file could not be read or written.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, with the path.
        action: String,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file is not a certificate pgset can read.
    #[error(
        "{path} is not a readable PEM certificate ({problem}); remove it to have a new one made"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A name that is neither a DNS name nor an IP address.
    #[error("`{0}` cannot be a certificate name (not a DNS name or an IP address)")]
    BadName(String),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A certificate and its private key, both PEM. `Debug` never shows the key.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<hidden>")
            .finish()
    }
}

/// A point in time, as the functions of this crate take it.
pub type Now = OffsetDateTime;

/// The current time (UTC).
pub fn now() -> Now {
    OffsetDateTime::now_utc()
}

/// The names local mode's members are reached by.
pub fn local_names() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

/// The names a cluster's clients and members use: the master and replica Services and every
/// member's pod name under the headless Service (`<service>`), each short, with the namespace,
/// with `.svc` and fully qualified (`.svc.cluster.local` or the given domain).
pub fn cluster_names(
    master_service: &str,
    replica_service: &str,
    headless_service: &str,
    pods: &[String],
    namespace: &str,
    cluster_domain: &str,
) -> Vec<String> {
    let mut hosts = vec![master_service.to_string(), replica_service.to_string()];
    hosts.extend(pods.iter().map(|p| format!("{p}.{headless_service}")));
    let mut names = Vec::new();
    for h in hosts {
        names.push(h.clone());
        names.push(format!("{h}.{namespace}"));
        names.push(format!("{h}.{namespace}.svc"));
        names.push(format!("{h}.{namespace}.svc.{cluster_domain}"));
    }
    names
}

fn make(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Make { what, source }
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, length: Duration) {
    // An hour back, so a clock a little behind the issuer's still accepts a new certificate.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + length;
}

fn san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(Error::BadName(name.to_string()));
    }
    name.to_string()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| Error::BadName(name.to_string()))
}

/// A new CA for `cluster` (CN `pgset CA <cluster>`), valid [`CA_VALIDITY`] from `now`.
pub fn make_ca(cluster: &str, now: OffsetDateTime) -> Result<Issued> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(make("CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{CA_COMMON_NAME} {cluster}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, CA_VALIDITY);
    let cert = params.self_signed(&key).map_err(make("CA certificate"))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue(
    ca: &Issued,
    what: &'static str,
    mut params: CertificateParams,
    now: OffsetDateTime,
) -> Result<Issued> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(make("CA key (unreadable)"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(make(what))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(make(what))?;
    validity(&mut params, now, LEAF_VALIDITY);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).map_err(make(what))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server certificate signed by `ca` for `names` (DNS names and IP addresses; the first is
/// also the CN), valid [`LEAF_VALIDITY`] from `now`.
pub fn issue_server(ca: &Issued, names: &[String], now: OffsetDateTime) -> Result<Issued> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_>>()?;
    let mut dn = DistinguishedName::new();
    if let Some(first) = names.first() {
        dn.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca, "server certificate", params, now)
}

/// A client certificate signed by `ca` with CN `user` (PostgreSQL's `cert` authentication
/// takes the CN as the role), valid [`LEAF_VALIDITY`] from `now`.
pub fn issue_client(ca: &Issued, user: &str, now: OffsetDateTime) -> Result<Issued> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, user);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(ca, "client certificate", params, now)
}

/// What a certificate says, read back from its PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// The issuer's common name.
    pub issuer_common_name: Option<String>,
    /// The subject alternative names: DNS names as written, IP addresses as text.
    pub names: Vec<String>,
    /// Whether it is a CA.
    pub is_ca: bool,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The serial number, hex (uppercase, as its DER bytes).
    pub serial: String,
}

/// Reads the facts of a PEM certificate (`problem` text on failure).
pub fn read_cert(pem: &str) -> std::result::Result<CertFacts, String> {
    use x509_parser::prelude::*;
    let (_, pem) = parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    let cert = pem.parse_x509().map_err(|e| e.to_string())?;
    let cn = |name: &X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_string)
    };
    let mut names = Vec::new();
    if let Ok(Some(sans)) = cert.subject_alternative_name() {
        for n in &sans.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(
                        IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string(),
                    ),
                    16 => names.push(
                        IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(CertFacts {
        common_name: cn(cert.subject()),
        issuer_common_name: cn(cert.issuer()),
        names,
        is_ca: cert.is_ca(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect(),
    })
}

/// Why a certificate must be made anew, or `None` while it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Within [`RENEW_BEFORE`] of its end, or past it.
    Expiring(OffsetDateTime),
    /// Not valid yet (a clock moved back).
    NotYetValid(OffsetDateTime),
    /// It names other hosts than those asked for.
    NamesChanged,
    /// Another CA issued it.
    OtherIssuer,
}

/// Whether a certificate with these facts must be renewed at `now`: within [`RENEW_BEFORE`] of
/// its end, not valid yet, issued for other names (`want_names`, ignored when `None`) or by a
/// CA other than `issuer_cn` (ignored when `None`).
pub fn needs_renewal(
    facts: &CertFacts,
    want_names: Option<&[String]>,
    issuer_cn: Option<&str>,
    now: OffsetDateTime,
) -> Option<Renewal> {
    if facts.not_after - now < RENEW_BEFORE {
        return Some(Renewal::Expiring(facts.not_after));
    }
    if facts.not_before > now {
        return Some(Renewal::NotYetValid(facts.not_before));
    }
    if let Some(want) = want_names {
        let mut have = facts.names.clone();
        let mut want = want.to_vec();
        have.sort();
        want.sort();
        if have != want {
            return Some(Renewal::NamesChanged);
        }
    }
    if let Some(issuer) = issuer_cn
        && facts.issuer_common_name.as_deref() != Some(issuer)
    {
        return Some(Renewal::OtherIssuer);
    }
    None
}

fn io(action: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { action, source }
}

/// Writes `text` to `path` with `mode`, through a temporary file renamed into place.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(format!("cannot create {}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(format!("cannot write {}", tmp.display())))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(io(format!("cannot set the mode of {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("cannot rename {}", tmp.display())))
}

fn read_pair(dir: &Path, cert: &str, key: &str) -> Result<Option<(Issued, CertFacts)>> {
    let (cert_path, key_path) = (dir.join(cert), dir.join(key));
    if !cert_path.exists() || !key_path.exists() {
        return Ok(None);
    }
    let cert_pem = fs::read_to_string(&cert_path)
        .map_err(io(format!("cannot read {}", cert_path.display())))?;
    let key_pem =
        fs::read_to_string(&key_path).map_err(io(format!("cannot read {}", key_path.display())))?;
    let facts = read_cert(&cert_pem).map_err(|problem| Error::Unreadable {
        path: cert_path,
        problem,
    })?;
    Ok(Some((Issued { cert_pem, key_pem }, facts)))
}

fn write_pair(dir: &Path, cert: &str, key: &str, issued: &Issued) -> Result<()> {
    // The key first: a certificate never stands next to an older key.
    write_file(&dir.join(key), &issued.key_pem, 0o600)?;
    write_file(&dir.join(cert), &issued.cert_pem, 0o644)
}

/// Whether the CA of `dir` is to be rotated with overlap now: its signing CA is within
/// [`CA_RENEW_BEFORE`] of its end, or a rotation is under way or not finished (the bundle holds
/// more than the signing CA).
pub fn ca_due(dir: &Path, now: OffsetDateTime) -> Result<bool> {
    let Some((_, facts)) = signing_ca(dir)? else {
        return Ok(false);
    };
    Ok(facts.not_after - now < CA_RENEW_BEFORE
        || ca_rotation(dir)? != (CaRotation::Settled { others: 0 }))
}

/// Keeps the set's TLS files in `dir` (made 0700): the CA (made once, anew only past its end:
/// near its end a rotation with overlap replaces it, [`ca_due`]), the
/// server certificate for `names` and the replication role's client certificate, each made
/// when missing or due ([`needs_renewal`]). Keys are written 0600. Returns one line per file
/// made (empty when everything was still valid); nothing valid is rewritten.
pub fn ensure_dir(
    dir: &Path,
    cluster: &str,
    names: &[String],
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("cannot set the mode of {}", dir.display())))?;
    let mut made = Vec::new();
    let ca_cn = format!("{CA_COMMON_NAME} {cluster}");
    let ca = match signing_ca(dir)? {
        // Near its end it is kept: a rotation with overlap replaces it ([`ca_due`]); one
        // past its end (or not valid yet) is trusted by no one any more and is made anew.
        Some((ca, facts)) if facts.not_after > now && facts.not_before <= now => ca,
        old => {
            let ca = make_ca(cluster, now)?;
            write_pair(dir, files::CA_CERT, files::CA_KEY, &ca)?;
            made.push(match old {
                None => format!("made the CA {}", dir.join(files::CA_CERT).display()),
                Some(_) => format!("renewed the CA {}", dir.join(files::CA_CERT).display()),
            });
            ca
        }
    };
    let ca_renewed = !made.is_empty();
    let leaves: [(&str, &str, Option<&[String]>); 2] = [
        (files::SERVER_CERT, files::SERVER_KEY, Some(names)),
        (files::REPLICATION_CERT, files::REPLICATION_KEY, None),
    ];
    for (cert, key, want) in leaves {
        let due = match read_pair(dir, cert, key)? {
            None => Some("made"),
            Some(_) if ca_renewed => Some("renewed"),
            Some((leaf, _)) if !signed_by(&leaf.cert_pem, &ca.cert_pem) => Some("renewed"),
            Some((_, facts)) => needs_renewal(&facts, want, Some(&ca_cn), now).map(|_| "renewed"),
        };
        if let Some(verb) = due {
            let issued = match want {
                Some(names) => issue_server(&ca, names, now)?,
                None => issue_client(&ca, contract::REPLICATION_USER, now)?,
            };
            write_pair(dir, cert, key, &issued)?;
            made.push(format!("{verb} {}", dir.join(cert).display()));
        }
    }
    Ok(made)
}

/// Reissues the server certificate (for `names`) and the replication certificate in `dir` now,
/// valid or not, under the CA kept there (which is not touched): a rotation. Keys are written
/// before their certificates, 0600. One line per file made.
pub fn reissue_leaves(dir: &Path, names: &[String], now: OffsetDateTime) -> Result<Vec<String>> {
    let ca = match signing_ca(dir)? {
        Some((ca, _)) => ca,
        None => {
            return Err(Error::Io {
                action: format!(
                    "cannot reissue the certificates in {}: it holds no CA ({} and {})",
                    dir.display(),
                    files::CA_CERT,
                    files::CA_KEY
                ),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
    };
    let server = issue_server(&ca, names, now)?;
    let client = issue_client(&ca, contract::REPLICATION_USER, now)?;
    write_pair(dir, files::SERVER_CERT, files::SERVER_KEY, &server)?;
    write_pair(
        dir,
        files::REPLICATION_CERT,
        files::REPLICATION_KEY,
        &client,
    )?;
    Ok([files::SERVER_CERT, files::REPLICATION_CERT]
        .iter()
        .map(|f| format!("reissued {}", dir.join(f).display()))
        .collect())
}

/// The signing CA of `dir`: the certificate of the bundle `ca.crt` that `ca.key` belongs to,
/// with that key, and its facts; `None` when either file is missing. A key that matches no
/// certificate of the bundle is an error naming both files.
pub fn signing_ca(dir: &Path) -> Result<Option<(Issued, CertFacts)>> {
    let Some((pair, _)) = read_pair(dir, files::CA_CERT, files::CA_KEY)? else {
        return Ok(None);
    };
    let cert_path = dir.join(files::CA_CERT);
    let cert_pem =
        matching_cert(&pair.cert_pem, &pair.key_pem).ok_or_else(|| Error::Unreadable {
            path: cert_path.clone(),
            problem: format!(
                "no certificate in it belongs to the key {}",
                dir.join(files::CA_KEY).display()
            ),
        })?;
    let facts = read_cert(&cert_pem).map_err(|problem| Error::Unreadable {
        path: cert_path,
        problem,
    })?;
    Ok(Some((
        Issued {
            cert_pem,
            key_pem: pair.key_pem,
        },
        facts,
    )))
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io(format!("cannot read {}", path.display())))
}

/// Where a CA rotation of a directory stands, read from its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaRotation {
    /// No rotation under way: the bundle holds the signing CA and `others` more (0 once a
    /// rotation is complete).
    Settled {
        /// How many CAs besides the signing one the bundle holds.
        others: usize,
    },
    /// The new CA is in the bundle and its key kept apart ([`CA_NEXT_KEY`]): the leaves are
    /// reissued by it once every member trusts the bundle.
    Begun,
}

/// Where the rotation of `dir` stands. A next key whose certificate is not in the bundle is an
/// error (the bundle was replaced by hand): nothing is decided from it.
pub fn ca_rotation(dir: &Path) -> Result<CaRotation> {
    let (signer, _) = signing_ca(dir)?.ok_or_else(|| no_ca(dir, "rotate the CA"))?;
    let bundle = read_text(&dir.join(files::CA_CERT))?;
    let next = dir.join(CA_NEXT_KEY);
    if next.exists() {
        let key = read_text(&next)?;
        return match matching_cert(&bundle, &key) {
            Some(_) => Ok(CaRotation::Begun),
            None => Err(Error::Unreadable {
                path: dir.join(files::CA_CERT),
                problem: format!(
                    "it does not hold the certificate of the rotation's new key {}; remove that key to start the rotation again",
                    next.display()
                ),
            }),
        };
    }
    let others = split_bundle(&bundle)
        .iter()
        .filter(|c| **c != signer.cert_pem)
        .count();
    Ok(CaRotation::Settled { others })
}

fn no_ca(dir: &Path, what: &str) -> Error {
    Error::Io {
        action: format!(
            "cannot {what} in {}: it holds no CA ({} and {})",
            dir.display(),
            files::CA_CERT,
            files::CA_KEY
        ),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

/// A CA rotation's first step: a new CA for `cluster` joins the bundle `ca.crt` (after the
/// signing CA, which keeps signing), its key kept as [`CA_NEXT_KEY`] (0600). The leaves are not
/// touched: every member goes on serving the old CA's certificates, now trusting both. A
/// rotation already begun is kept (nothing written, no line): a run that stopped resumes.
pub fn begin_ca_rotation(dir: &Path, cluster: &str, now: OffsetDateTime) -> Result<Vec<String>> {
    if ca_rotation(dir)? == CaRotation::Begun {
        return Ok(Vec::new());
    }
    let (signer, _) = signing_ca(dir)?.ok_or_else(|| no_ca(dir, "rotate the CA"))?;
    let next = make_ca(cluster, now)?;
    // The key first: a bundle never names a CA whose key is lost.
    write_file(&dir.join(CA_NEXT_KEY), &next.key_pem, 0o600)?;
    let bundle = read_text(&dir.join(files::CA_CERT))?;
    let mut certs = vec![signer.cert_pem.clone()];
    certs.extend(split_bundle(&bundle));
    certs.push(next.cert_pem);
    write_file(&dir.join(files::CA_CERT), &make_bundle(&certs), 0o644)?;
    Ok(vec![format!(
        "added a new CA to the trust bundle {} (the certificates stay the old CA's until every member trusts it)",
        dir.join(files::CA_CERT).display()
    )])
}

/// A CA rotation's second step, once every member trusts the bundle: the server (for `names`)
/// and replication certificates are reissued by the new CA, whose key becomes the signing key
/// (`ca.key`); the old CA stays in the bundle. An error, nothing written, when no rotation was
/// begun.
pub fn switch_to_next_ca(dir: &Path, names: &[String], now: OffsetDateTime) -> Result<Vec<String>> {
    if ca_rotation(dir)? != CaRotation::Begun {
        return Err(Error::Io {
            action: format!(
                "cannot reissue the certificates by a new CA in {}: no CA rotation was begun there ({} is missing)",
                dir.display(),
                CA_NEXT_KEY
            ),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let bundle = read_text(&dir.join(files::CA_CERT))?;
    let key_pem = read_text(&dir.join(CA_NEXT_KEY))?;
    let cert_pem = matching_cert(&bundle, &key_pem).expect("checked by ca_rotation");
    let next = Issued { cert_pem, key_pem };
    let server = issue_server(&next, names, now)?;
    let client = issue_client(&next, contract::REPLICATION_USER, now)?;
    write_pair(dir, files::SERVER_CERT, files::SERVER_KEY, &server)?;
    write_pair(
        dir,
        files::REPLICATION_CERT,
        files::REPLICATION_KEY,
        &client,
    )?;
    fs::rename(dir.join(CA_NEXT_KEY), dir.join(files::CA_KEY)).map_err(io(format!(
        "cannot rename {}",
        dir.join(CA_NEXT_KEY).display()
    )))?;
    let mut certs = vec![next.cert_pem.clone()];
    certs.extend(split_bundle(&bundle));
    write_file(&dir.join(files::CA_CERT), &make_bundle(&certs), 0o644)?;
    Ok([files::SERVER_CERT, files::REPLICATION_CERT]
        .iter()
        .map(|f| format!("reissued {} by the new CA", dir.join(f).display()))
        .collect())
}

/// A CA rotation's last step, once every member has loaded the new CA's certificates (no leaf
/// of an old CA is in use): the bundle keeps the signing CA alone. Nothing written when it
/// already does, or while a rotation is under way (an error: its leaves are the old CA's).
pub fn retire_old_cas(dir: &Path) -> Result<Vec<String>> {
    match ca_rotation(dir)? {
        CaRotation::Settled { others: 0 } => Ok(Vec::new()),
        CaRotation::Begun => Err(Error::Io {
            action: format!(
                "cannot take the old CA out of {}: the certificates are not reissued by the new CA yet",
                dir.join(files::CA_CERT).display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        }),
        CaRotation::Settled { .. } => {
            let (signer, _) = signing_ca(dir)?.ok_or_else(|| no_ca(dir, "retire a CA"))?;
            for f in [files::SERVER_CERT, files::REPLICATION_CERT] {
                let leaf = read_text(&dir.join(f))?;
                if !signed_by(&leaf, &signer.cert_pem) {
                    return Err(Error::Unreadable {
                        path: dir.join(f),
                        problem: "it is not signed by the signing CA, so the old CA it needs stays in the bundle; reissue it (rotate-certs)".into(),
                    });
                }
            }
            write_file(&dir.join(files::CA_CERT), &signer.cert_pem, 0o644)?;
            Ok(vec![format!(
                "took the old CA out of the trust bundle {}",
                dir.join(files::CA_CERT).display()
            )])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn parsed<R>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        f(&cert)
    }

    #[test]
    fn the_ca_signs_certificates_and_nothing_else() {
        let ca = make_ca("db", now()).unwrap();
        let f = read_cert(&ca.cert_pem).unwrap();
        assert!(f.is_ca);
        assert_eq!(f.common_name.as_deref(), Some("pgset CA db"));
        assert!(f.not_after - now() > Duration::days(3000));
        parsed(&ca.cert_pem, |c| {
            let ku = c.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
            assert_eq!(
                c.basic_constraints()
                    .unwrap()
                    .unwrap()
                    .value
                    .path_len_constraint,
                Some(0)
            );
        });
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn the_server_certificate_names_every_host_and_is_signed_by_the_ca() {
        let t = now();
        let ca = make_ca("db", t).unwrap();
        let names = local_names();
        let s = issue_server(&ca, &names, t).unwrap();
        let f = read_cert(&s.cert_pem).unwrap();
        assert_eq!(f.names, vec!["localhost", "127.0.0.1"]);
        assert_eq!(f.issuer_common_name.as_deref(), Some("pgset CA db"));
        assert!(!f.is_ca);
        // Certificates keep whole seconds.
        assert!((f.not_after - t - LEAF_VALIDITY).abs() < Duration::seconds(2));
        assert!(f.not_before < t);
        parsed(&s.cert_pem, |c| {
            let eku = c.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && !eku.client_auth);
            assert!(c.key_usage().unwrap().unwrap().value.digital_signature());
            let (_, ca_cert) = parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
            let ca_cert = ca_cert.parse_x509().unwrap();
            assert!(c.verify_signature(Some(ca_cert.public_key())).is_ok());
        });
        assert_eq!(
            needs_renewal(&f, Some(&names), Some("pgset CA db"), t),
            None
        );
    }

    #[test]
    fn the_client_certificate_is_the_replication_role() {
        let ca = make_ca("db", now()).unwrap();
        let c = issue_client(&ca, contract::REPLICATION_USER, now()).unwrap();
        let f = read_cert(&c.cert_pem).unwrap();
        assert_eq!(f.common_name.as_deref(), Some(contract::REPLICATION_USER));
        assert!(f.names.is_empty());
        parsed(&c.cert_pem, |c| {
            let eku = c.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.client_auth && !eku.server_auth);
        });
    }

    #[test]
    fn cluster_names_cover_services_and_pods_short_and_qualified() {
        let n = cluster_names(
            "db-master",
            "db-replica",
            "db",
            &["db-0".into(), "db-1".into()],
            "prod",
            "cluster.local",
        );
        for want in [
            "db-master",
            "db-master.prod",
            "db-master.prod.svc",
            "db-master.prod.svc.cluster.local",
            "db-replica.prod.svc",
            "db-0.db",
            "db-1.db.prod.svc.cluster.local",
        ] {
            assert!(n.contains(&want.to_string()), "{want} in {n:?}");
        }
        let ca = make_ca("db", now()).unwrap();
        let s = issue_server(&ca, &n, now()).unwrap();
        assert_eq!(read_cert(&s.cert_pem).unwrap().names, n);
        assert!(matches!(
            issue_server(&ca, &["not a name!".into()], now()),
            Err(Error::BadName(_))
        ));
    }

    #[test]
    fn renewal_is_due_near_the_end_for_other_names_or_another_ca() {
        let t = now();
        let ca = make_ca("db", t).unwrap();
        let f = read_cert(&issue_server(&ca, &local_names(), t).unwrap().cert_pem).unwrap();
        let names = local_names();
        let later = t + LEAF_VALIDITY - Duration::days(6);
        assert!(matches!(
            needs_renewal(&f, Some(&names), None, later),
            Some(Renewal::Expiring(_))
        ));
        assert_eq!(
            needs_renewal(&f, Some(&names), None, t + Duration::days(80)),
            None
        );
        assert_eq!(
            needs_renewal(&f, Some(&["db-master".to_string()]), None, t),
            Some(Renewal::NamesChanged)
        );
        assert_eq!(
            needs_renewal(&f, None, Some("pgset CA other"), t),
            Some(Renewal::OtherIssuer)
        );
        assert!(matches!(
            needs_renewal(&f, None, None, t - Duration::days(1)),
            Some(Renewal::NotYetValid(_))
        ));
    }

    #[test]
    fn a_directory_is_made_once_keys_private_and_renewed_only_when_due() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let t = now();
        let made = ensure_dir(&dir, "db", &local_names(), t).unwrap();
        assert_eq!(made.len(), 3, "{made:?}");
        for key in [files::CA_KEY, files::SERVER_KEY, files::REPLICATION_KEY] {
            assert_eq!(fs::metadata(dir.join(key)).unwrap().mode() & 0o777, 0o600);
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let read = |f: &str| fs::read(dir.join(f)).unwrap();
        let before: Vec<_> = [files::CA_CERT, files::SERVER_CERT, files::SERVER_KEY]
            .map(read)
            .into();
        assert!(
            ensure_dir(&dir, "db", &local_names(), t)
                .unwrap()
                .is_empty()
        );
        let after: Vec<_> = [files::CA_CERT, files::SERVER_CERT, files::SERVER_KEY]
            .map(read)
            .into();
        assert_eq!(before, after);

        // Near the leaves' end: they are renewed under the same CA.
        let late = t + LEAF_VALIDITY - Duration::days(3);
        let made = ensure_dir(&dir, "db", &local_names(), late).unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert_eq!(read(files::CA_CERT), before[0]);
        assert_ne!(read(files::SERVER_CERT), before[1]);

        // Other names: only the server certificate.
        let names = vec!["localhost".to_string()];
        let made = ensure_dir(&dir, "db", &names, late).unwrap();
        assert_eq!(made.len(), 1, "{made:?}");
        assert!(made[0].contains(files::SERVER_CERT));

        // A file that is not a certificate: one error that says what to do, nothing changed.
        fs::write(dir.join(files::SERVER_CERT), "junk").unwrap();
        let e = ensure_dir(&dir, "db", &names, late)
            .unwrap_err()
            .to_string();
        assert!(e.contains("remove it"), "{e}");
        assert_eq!(read(files::SERVER_CERT), b"junk");
    }

    #[test]
    fn a_rotation_reissues_both_leaves_under_the_same_ca_with_new_serials() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let t = now();
        let e = reissue_leaves(&dir, &local_names(), t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no CA"), "{e}");
        ensure_dir(&dir, "db", &local_names(), t).unwrap();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        let facts = |f: &str| read_cert(&read(f)).unwrap();
        let (ca, server, repl) = (
            read(files::CA_CERT),
            facts(files::SERVER_CERT),
            facts(files::REPLICATION_CERT),
        );
        let made = reissue_leaves(&dir, &local_names(), t).unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert_eq!(read(files::CA_CERT), ca);
        let (server2, repl2) = (facts(files::SERVER_CERT), facts(files::REPLICATION_CERT));
        assert_ne!(server2.serial, server.serial);
        assert_ne!(repl2.serial, repl.serial);
        assert_eq!(server2.names, server.names);
        assert_eq!(
            repl2.common_name.as_deref(),
            Some(contract::REPLICATION_USER)
        );
        // Nothing is due afterwards: an ensure rewrites nothing.
        assert!(
            ensure_dir(&dir, "db", &local_names(), t)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_bundle_splits_into_its_certificates_and_the_signer_is_found_by_its_key() {
        let t = now();
        let (a, b) = (make_ca("db", t).unwrap(), make_ca("db", t).unwrap());
        let bundle = make_bundle(&[&a.cert_pem, &b.cert_pem, &a.cert_pem]);
        assert_eq!(
            split_bundle(&bundle),
            vec![a.cert_pem.clone(), b.cert_pem.clone()]
        );
        assert_eq!(matching_cert(&bundle, &b.key_pem), Some(b.cert_pem.clone()));
        assert_eq!(matching_cert(&bundle, &a.key_pem), Some(a.cert_pem.clone()));
        assert_eq!(matching_cert(&a.cert_pem, &b.key_pem), None);
        // Same name, other key: only the signature tells which CA signed a leaf.
        let leaf = issue_server(&b, &local_names(), t).unwrap();
        assert!(signed_by(&leaf.cert_pem, &b.cert_pem));
        assert!(!signed_by(&leaf.cert_pem, &a.cert_pem));
        assert_eq!(digest(b"abc").len(), 64);
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_ca_rotation_adds_the_new_ca_then_reissues_the_leaves_then_retires_the_old_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let t = now();
        let names = local_names();
        ensure_dir(&dir, "db", &names, t).unwrap();
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        let (old_ca, old_server, old_repl) = (
            read(files::CA_CERT),
            read(files::SERVER_CERT),
            read(files::REPLICATION_CERT),
        );
        assert_eq!(
            ca_rotation(&dir).unwrap(),
            CaRotation::Settled { others: 0 }
        );
        let e = switch_to_next_ca(&dir, &names, t).unwrap_err().to_string();
        assert!(e.contains("no CA rotation was begun"), "{e}");

        // 1: the bundle holds both, the leaves and the signing key are untouched.
        let made = begin_ca_rotation(&dir, "db", t).unwrap();
        assert_eq!(made.len(), 1, "{made:?}");
        assert_eq!(ca_rotation(&dir).unwrap(), CaRotation::Begun);
        let bundle = split_bundle(&read(files::CA_CERT));
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle[0], old_ca);
        assert_eq!(read(files::SERVER_CERT), old_server);
        assert_eq!(read(files::REPLICATION_CERT), old_repl);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(dir.join(CA_NEXT_KEY)).unwrap().mode() & 0o777,
            0o600
        );
        // A run that stopped here resumes: nothing new is made, nothing is due for ensure.
        let before = read(files::CA_CERT);
        assert!(begin_ca_rotation(&dir, "db", t).unwrap().is_empty());
        assert_eq!(read(files::CA_CERT), before);
        assert!(ensure_dir(&dir, "db", &names, t).unwrap().is_empty());
        let e = retire_old_cas(&dir).unwrap_err().to_string();
        assert!(e.contains("not reissued by the new CA yet"), "{e}");
        assert_eq!(read(files::CA_CERT), before);

        // 2: the leaves are the new CA's, the old CA still trusted.
        let made = switch_to_next_ca(&dir, &names, t).unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert!(!dir.join(CA_NEXT_KEY).exists());
        let new_ca = bundle[1].clone();
        assert!(signed_by(&read(files::SERVER_CERT), &new_ca));
        assert!(signed_by(&read(files::REPLICATION_CERT), &new_ca));
        assert!(!signed_by(&read(files::SERVER_CERT), &old_ca));
        assert_eq!(
            split_bundle(&read(files::CA_CERT)),
            vec![new_ca.clone(), old_ca.clone()]
        );
        assert_eq!(signing_ca(&dir).unwrap().unwrap().0.cert_pem, new_ca);
        assert_eq!(
            ca_rotation(&dir).unwrap(),
            CaRotation::Settled { others: 1 }
        );
        assert!(ensure_dir(&dir, "db", &names, t).unwrap().is_empty());

        // 3: the old CA leaves the bundle; a second retire writes nothing.
        assert_eq!(retire_old_cas(&dir).unwrap().len(), 1);
        assert_eq!(read(files::CA_CERT), new_ca);
        assert!(retire_old_cas(&dir).unwrap().is_empty());
        assert_eq!(
            ca_rotation(&dir).unwrap(),
            CaRotation::Settled { others: 0 }
        );
        assert!(ensure_dir(&dir, "db", &names, t).unwrap().is_empty());
    }

    #[test]
    fn ensure_reissues_a_leaf_of_another_ca_with_the_same_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let t = now();
        ensure_dir(&dir, "db", &local_names(), t).unwrap();
        let other = make_ca("db", t).unwrap();
        let foreign = issue_server(&other, &local_names(), t).unwrap();
        write_pair(&dir, files::SERVER_CERT, files::SERVER_KEY, &foreign).unwrap();
        let made = ensure_dir(&dir, "db", &local_names(), t).unwrap();
        assert_eq!(made.len(), 1, "{made:?}");
        let ca = fs::read_to_string(dir.join(files::CA_CERT)).unwrap();
        assert!(signed_by(
            &fs::read_to_string(dir.join(files::SERVER_CERT)).unwrap(),
            &ca
        ));
    }

    #[test]
    fn a_ca_near_its_end_is_kept_for_a_rotation_and_one_past_it_is_made_anew() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tls");
        let t = now();
        assert!(!ca_due(&dir, t).unwrap(), "no CA: nothing to rotate");
        ensure_dir(&dir, "db", &local_names(), t).unwrap();
        let ca = fs::read_to_string(dir.join(files::CA_CERT)).unwrap();
        assert!(!ca_due(&dir, t).unwrap());
        let near = t + CA_VALIDITY - CA_RENEW_BEFORE + Duration::days(1);
        assert!(ca_due(&dir, near).unwrap());
        ensure_dir(&dir, "db", &local_names(), near).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(files::CA_CERT)).unwrap(),
            ca,
            "kept for the rotation"
        );
        begin_ca_rotation(&dir, "db", t).unwrap();
        assert!(ca_due(&dir, t).unwrap(), "a rotation under way is finished");
        let past = t + CA_VALIDITY + Duration::days(1);
        let made = ensure_dir(&dir, "db", &local_names(), past).unwrap();
        assert!(made[0].starts_with("renewed the CA"), "{made:?}");
    }
}
