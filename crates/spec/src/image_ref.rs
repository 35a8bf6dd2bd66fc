//! Container image references, parsed in one place: `[registry[:port]/]path[:tag][@algo:hex]`
//! as the distribution reference grammar allows it, and the name a container runtime gives
//! them (`pgset-agent:1` is `docker.io/library/pgset-agent:1`).

/// The registry of references without one.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The repository namespace of single-component names on the default registry.
const OFFICIAL_NAMESPACE: &str = "library";

/// The parts of an image reference, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageReference<'a> {
    /// The registry host (and port), when the reference names one.
    pub registry: Option<&'a str>,
    /// The repository path (`library/postgres`, `team/pgset-agent`).
    pub path: &'a str,
    /// The tag, when given.
    pub tag: Option<&'a str>,
    /// The digest (`sha256:...`), when given.
    pub digest: Option<&'a str>,
}

impl<'a> ImageReference<'a> {
    /// Parses `s`; `None` when it is not an image reference.
    pub fn parse(s: &'a str) -> Option<ImageReference<'a>> {
        if s.is_empty() || s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return None;
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let (algo, hex) = d.split_once(':')?;
            if algo.is_empty()
                || !algo
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                || hex.len() < 32
                || !hex.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return None;
            }
        }
        // Split off the tag: a ':' after the last '/'.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(i) if last_slash.is_none_or(|j| i > j) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return None;
            }
        }
        // A first part with '.', ':' or "localhost" is a registry host.
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first), path)
            }
            _ => (None, name),
        };
        if let Some(host) = registry {
            let (h, port) = match host.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host, None),
            };
            if port.is_some_and(|p| p.parse::<u16>().is_err())
                || h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return None;
            }
        }
        let path_ok = path.split('/').all(|p| {
            let b = p.as_bytes();
            b.first()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.last()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
        });
        path_ok.then_some(ImageReference {
            registry,
            path,
            tag,
            digest,
        })
    }

    /// Registry and path as a container runtime resolves them: a missing registry (or
    /// `index.docker.io`) is `docker.io`, a single-component name there is under `library/`.
    pub fn normalized_name(&self) -> String {
        let registry = match self.registry {
            None | Some("index.docker.io") => DEFAULT_REGISTRY,
            Some(r) => r,
        };
        if registry == DEFAULT_REGISTRY && !self.path.contains('/') {
            format!("{registry}/{OFFICIAL_NAMESPACE}/{}", self.path)
        } else {
            format!("{registry}/{}", self.path)
        }
    }

    /// The whole reference as a container runtime records it: [`Self::normalized_name`], then
    /// the tag and the digest as given (no tag is added).
    pub fn normalized(&self) -> String {
        let mut out = self.normalized_name();
        if let Some(t) = self.tag {
            out.push(':');
            out.push_str(t);
        }
        if let Some(d) = self.digest {
            out.push('@');
            out.push_str(d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_a_reference() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let full = format!("registry.lab:5000/db/pgset-agent:0.1.0@{digest}");
        assert_eq!(
            ImageReference::parse(&full),
            Some(ImageReference {
                registry: Some("registry.lab:5000"),
                path: "db/pgset-agent",
                tag: Some("0.1.0"),
                digest: Some(&digest),
            })
        );
        let short = ImageReference::parse("postgres").unwrap();
        assert_eq!(
            (short.registry, short.path, short.tag),
            (None, "postgres", None)
        );
        // A first part without '.', ':' or "localhost" is a path, not a registry.
        assert_eq!(ImageReference::parse("team/pg:1").unwrap().registry, None);
    }

    #[test]
    fn names_resolve_like_the_runtime() {
        let n = |s: &str| ImageReference::parse(s).unwrap().normalized();
        assert_eq!(n("pgset-agent:1"), "docker.io/library/pgset-agent:1");
        assert_eq!(n("pgset-agent"), "docker.io/library/pgset-agent");
        assert_eq!(n("team/pgset-agent:dev"), "docker.io/team/pgset-agent:dev");
        assert_eq!(n("index.docker.io/pg:3"), "docker.io/library/pg:3");
        assert_eq!(n("localhost/pgset-agent"), "localhost/pgset-agent");
        assert_eq!(n("localhost:5000/a:x"), "localhost:5000/a:x");
    }
}
