//! `pgset-agent install DEST`: copies the running binary to DEST atomically (temp file, rename),
//! mode 0755, for the init container that fills the shared emptyDir.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::{Error, Result, io_err};

/// Copies the current executable to `dest`.
pub fn install(dest: &Path) -> Result<()> {
    let me = std::env::current_exe().map_err(io_err("find the agent's own binary"))?;
    install_from(&me, dest)
}

/// Copies `source` to `dest` through a temp file in the same directory.
pub fn install_from(source: &Path, dest: &Path) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| Error::DataDir {
            path: dest.to_path_buf(),
            problem: "the destination has no parent directory".into(),
        })?;
    if !dir.is_dir() {
        return Err(Error::DataDir {
            path: dir.to_path_buf(),
            problem: "the destination directory does not exist (mount the shared volume there)"
                .into(),
        });
    }
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let copy = || -> std::io::Result<()> {
        fs::copy(source, &tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dest)
    };
    copy().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(format!(
            "install {} to {}",
            source.display(),
            dest.display()
        ))(e)
    })?;
    crate::info!("installed {} to {}", source.display(), dest.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_executable_copy() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::write(&src, b"binary").unwrap();
        let dest = t.path().join("bin").join("pgset-agent");
        assert!(
            install_from(&src, &dest)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        fs::create_dir(t.path().join("bin")).unwrap();
        install_from(&src, &dest).unwrap();
        install_from(&src, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"binary");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_dir(t.path().join("bin")).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
