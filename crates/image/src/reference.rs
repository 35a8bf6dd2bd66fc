//! The name an imported image gets: the agent image reference normalised as the container
//! runtime stores it (`pgset-agent:1` → `docker.io/library/pgset-agent:1`), and its tag.

use pgset_spec::image_ref::ImageReference;

/// A tagged image name as containerd records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    /// The normalised reference: registry, repository path and tag.
    pub full: String,
    /// The tag alone.
    pub tag: String,
}

/// The tag of references without one.
const DEFAULT_TAG: &str = "latest";

impl ImageName {
    /// Normalises an image reference the way the kubelet and containerd resolve it: a missing
    /// registry is `docker.io`, a single-component name there is under `library/`, a missing tag
    /// is `latest`. A digest reference is refused: an image built here is found by its tag.
    pub fn parse(reference: &str) -> Result<ImageName, String> {
        if reference.contains('@') {
            return Err(format!(
                "agent image {reference:?} names a digest; an image built here is imported under a tag: pass --agent-image NAME:TAG"
            ));
        }
        if reference.is_empty() || reference.chars().any(char::is_whitespace) {
            return Err(format!(
                "agent image {reference:?} is not an image reference: pass --agent-image NAME:TAG"
            ));
        }
        let Some(parsed) = ImageReference::parse(reference) else {
            return Err(format!(
                "agent image {reference:?} is not an image reference: pass --agent-image NAME:TAG"
            ));
        };
        let tag = parsed.tag.unwrap_or(DEFAULT_TAG);
        Ok(ImageName {
            full: format!("{}:{tag}", parsed.normalized_name()),
            tag: tag.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(reference: &str) -> String {
        ImageName::parse(reference).unwrap().full
    }

    #[test]
    fn the_default_agent_image_is_already_normal() {
        let default = pgset_spec::default_agent_image();
        let name = ImageName::parse(&default).unwrap();
        assert_eq!(name.full, default);
        assert_eq!(name.tag, pgset_spec::VERSION);
    }

    #[test]
    fn short_names_resolve_like_the_runtime() {
        assert_eq!(full("pgset-agent:1.2"), "docker.io/library/pgset-agent:1.2");
        assert_eq!(full("pgset-agent"), "docker.io/library/pgset-agent:latest");
        assert_eq!(
            full("team/pgset-agent:dev"),
            "docker.io/team/pgset-agent:dev"
        );
        assert_eq!(
            full("index.docker.io/pgset-agent:3"),
            "docker.io/library/pgset-agent:3"
        );
    }

    #[test]
    fn registries_are_kept() {
        assert_eq!(
            full("registry.lab:5000/db/pgset-agent:0.1.0"),
            "registry.lab:5000/db/pgset-agent:0.1.0"
        );
        assert_eq!(
            full("localhost/pgset-agent"),
            "localhost/pgset-agent:latest"
        );
        assert_eq!(
            full("localhost:5000/pgset-agent:x"),
            "localhost:5000/pgset-agent:x"
        );
        assert_eq!(
            ImageName::parse("localhost:5000/pgset-agent:x")
                .unwrap()
                .tag,
            "x"
        );
    }

    #[test]
    fn digests_and_blanks_are_refused_with_the_fix() {
        let digest = format!("pgset-agent@sha256:{}", "a".repeat(64));
        assert!(
            ImageName::parse(&digest)
                .unwrap_err()
                .contains("--agent-image NAME:TAG")
        );
        assert!(ImageName::parse("").is_err());
        assert!(ImageName::parse("a b:1").is_err());
    }
}
