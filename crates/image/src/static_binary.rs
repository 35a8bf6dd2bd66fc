//! The static `pgset-agent` executable the image carries: built with cargo in a target directory
//! of its own, then checked to be a static x86-64 ELF that answers `--version`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pgset_command::HostCommand;

/// The package and binary built into the image.
pub const AGENT_PACKAGE: &str = "pgset-agent";
/// The target triple of the image's executable (the image is linux/amd64).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Rust flags making the executable static (glibc linked in, no dynamic loader needed).
pub const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// Cargo's target directory as cargo itself picks it: `CARGO_TARGET_DIR` when set (relative
/// to the current directory, as cargo reads it), else `target/` in the workspace.
pub fn cargo_target_dir(workspace: &Path, env: Option<std::ffi::OsString>) -> PathBuf {
    match env.filter(|v| !v.is_empty()).map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => std::env::current_dir()
            .map(|cwd| cwd.join(&dir))
            .unwrap_or(dir),
        None => workspace.join("target"),
    }
}

/// This process's cargo target directory (see [`cargo_target_dir`]).
pub fn target_root(workspace: &Path) -> PathBuf {
    cargo_target_dir(workspace, std::env::var_os("CARGO_TARGET_DIR"))
}

/// Where the image build keeps its artifacts below the target directory: apart from the normal
/// build's, so it neither waits on its lock nor invalidates its artifacts.
pub fn image_target_dir(target_root: &Path) -> PathBuf {
    target_root.join("image")
}

/// Whether an environment variable is one an enclosing `cargo run` or `cargo test` sets for the
/// program it runs. Passed on to the nested build, they would change what build scripts see
/// (ring's reads the package name and manifest directory) and rebuild the dependencies.
pub fn is_enclosing_package_var(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// The names of this process's variables that [`is_enclosing_package_var`] picks, sorted.
pub fn enclosing_package_vars() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| is_enclosing_package_var(name))
        .collect();
    names.sort();
    names
}

/// The `cargo build` command producing the static agent into `target_dir`. The caller's rust
/// flags are replaced, so the same sources give the same executable; `enclosing_vars` (see
/// [`is_enclosing_package_var`]) are removed from its environment.
pub fn build_command(
    cargo: &Path,
    workspace: &Path,
    target_dir: &Path,
    enclosing_vars: &[String],
) -> HostCommand {
    let command = HostCommand::new(cargo)
        .args(["build", "--release", "-p", AGENT_PACKAGE])
        .args(["--bin", AGENT_PACKAGE, "--target", AGENT_TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .dir(workspace);
    enclosing_vars
        .iter()
        .fold(command, |command, name| command.env_remove(name))
}

/// Where [`build_command`] leaves the executable.
pub fn built_path(target_dir: &Path) -> PathBuf {
    target_dir
        .join(AGENT_TARGET)
        .join("release")
        .join(AGENT_PACKAGE)
}

/// The cargo to run: the one running this program when there is one, else `cargo` on PATH.
pub fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO")
        .filter(|c| !c.is_empty())
        .map_or_else(|| PathBuf::from("cargo"), PathBuf::from)
}

/// Builds the static agent, checks it and returns its path.
pub fn build(workspace: &Path, target_dir: &Path, version: &str) -> Result<PathBuf> {
    build_command(
        &cargo_program(),
        workspace,
        target_dir,
        &enclosing_package_vars(),
    )
    .stream()
    .context("build the static pgset-agent executable")?;
    let path = built_path(target_dir);
    check(&path, version)?;
    Ok(path)
}

/// Checks an executable is a static x86-64 ELF whose `--version` names `version`.
pub fn check(path: &Path, version: &str) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    check_static_elf(&bytes).map_err(|problem| {
        anyhow::anyhow!(
            "{} is not a static x86-64 executable: {problem}; build it with RUSTFLAGS='{STATIC_RUSTFLAGS}' --target {AGENT_TARGET}",
            path.display()
        )
    })?;
    let printed = HostCommand::new(path)
        .arg("--version")
        .read()
        .context("check the built agent answers --version")?;
    if !printed.split_whitespace().any(|word| word == version) {
        bail!(
            "{} --version printed {:?}, not version {version}",
            path.display(),
            printed.trim()
        );
    }
    Ok(())
}

/// ELF program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;
/// ELF program header type of the dynamic section.
const PT_DYNAMIC: u32 = 2;
/// Dynamic section tag ending the section.
const DT_NULL: u64 = 0;
/// Dynamic section tag of a needed shared library.
const DT_NEEDED: u64 = 1;
/// ELF machine number of x86-64.
const EM_X86_64: u16 = 62;

/// Why an executable is not a static x86-64 ELF, or `Ok` when it is: 64-bit little-endian,
/// machine x86-64, an executable or position-independent type, no program interpreter and no
/// needed shared library (a static-pie's dynamic section only relocates itself).
pub fn check_static_elf(bytes: &[u8]) -> Result<(), String> {
    let field = |offset: usize, len: usize| -> Result<&[u8], String> {
        bytes
            .get(offset..offset + len)
            .ok_or_else(|| format!("truncated at byte {offset}"))
    };
    let u16_at = |offset| field(offset, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |offset| field(offset, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |offset| {
        field(offset, 8).map(|b| {
            let mut word = [0u8; 8];
            word.copy_from_slice(b);
            u64::from_le_bytes(word)
        })
    };
    let as_index =
        |value: u64| usize::try_from(value).map_err(|_| format!("offset {value} too large"));

    if field(0, 4)? != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if field(4, 1)? != [2] || field(5, 1)? != [1] {
        return Err("not a 64-bit little-endian ELF".into());
    }
    let machine = u16_at(18)?;
    if machine != EM_X86_64 {
        return Err(format!("machine {machine}, not x86-64 ({EM_X86_64})"));
    }
    let kind = u16_at(16)?;
    if kind != 2 && kind != 3 {
        return Err(format!("ELF type {kind} is not an executable"));
    }
    let phoff = as_index(u64_at(32)?)?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    if phentsize < 56 {
        return Err(format!(
            "program header entry size {phentsize} is too small"
        ));
    }
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        match u32_at(header)? {
            PT_INTERP => {
                let offset = as_index(u64_at(header + 8)?)?;
                let size = as_index(u64_at(header + 32)?)?;
                let interpreter = String::from_utf8_lossy(field(offset, size)?)
                    .trim_end_matches('\0')
                    .to_owned();
                return Err(format!(
                    "it is dynamically linked (program interpreter {interpreter})"
                ));
            }
            PT_DYNAMIC => {
                let offset = as_index(u64_at(header + 8)?)?;
                let size = as_index(u64_at(header + 32)?)?;
                let mut needed = 0;
                for entry in 0..size / 16 {
                    match u64_at(offset + entry * 16)? {
                        DT_NULL => break,
                        DT_NEEDED => needed += 1,
                        _ => {}
                    }
                }
                if needed > 0 {
                    return Err(format!("it needs {needed} shared libraries"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header followed by the given program headers (type, offset, size) and
    /// `tail` bytes.
    fn elf(machine: u16, headers: &[(u32, u64, u64)], tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&3u16.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&u16::try_from(headers.len()).unwrap().to_le_bytes());
        for &(kind, offset, size) in headers {
            let mut h = vec![0u8; 56];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&offset.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend(h);
        }
        b.extend_from_slice(tail);
        b
    }

    fn dynamic(tags: &[u64]) -> Vec<u8> {
        tags.iter()
            .flat_map(|t| t.to_le_bytes().into_iter().chain(0u64.to_le_bytes()))
            .collect()
    }

    #[test]
    fn a_static_pie_passes() {
        let tail = dynamic(&[0x6ffffffb, 7, 0]);
        let offset = 64 + 56 * 2;
        let bytes = elf(EM_X86_64, &[(1, 0, 0), (PT_DYNAMIC, offset, 48)], &tail);
        assert_eq!(check_static_elf(&bytes), Ok(()));
    }

    #[test]
    fn an_interpreter_means_dynamic() {
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let bytes = elf(EM_X86_64, &[(PT_INTERP, 64 + 56, 28)], interp);
        let err = check_static_elf(&bytes).unwrap_err();
        assert!(err.contains("/lib64/ld-linux-x86-64.so.2"), "{err}");
    }

    #[test]
    fn a_needed_library_means_dynamic() {
        let tail = dynamic(&[DT_NEEDED, 7, DT_NEEDED, 0]);
        let bytes = elf(EM_X86_64, &[(PT_DYNAMIC, 64 + 56, 64)], &tail);
        assert_eq!(
            check_static_elf(&bytes),
            Err("it needs 2 shared libraries".into())
        );
    }

    #[test]
    fn other_machines_and_junk_are_refused() {
        assert!(
            check_static_elf(&elf(183, &[], &[]))
                .unwrap_err()
                .contains("machine 183")
        );
        assert_eq!(
            check_static_elf(b"#!/bin/sh\n"),
            Err("not an ELF file".into())
        );
        let mut truncated = elf(EM_X86_64, &[(PT_INTERP, 64 + 56, 28)], &[]);
        truncated.truncate(100);
        assert!(
            check_static_elf(&truncated)
                .unwrap_err()
                .contains("truncated")
        );
    }

    #[test]
    fn the_hosts_dynamic_shell_is_refused() {
        // /bin/sh on a glibc system is a dynamically linked executable.
        let bytes = std::fs::read("/bin/sh").unwrap();
        let err = check_static_elf(&bytes).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
    }

    #[test]
    fn the_build_command_is_static_release_in_its_own_directory() {
        let cmd = build_command(
            Path::new("cargo"),
            Path::new("/src"),
            &image_target_dir(&cargo_target_dir(Path::new("/src"), None)),
            &["CARGO_PKG_NAME".to_owned()],
        );
        assert_eq!(
            cmd.to_string(),
            "(cd /src && env -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_RUSTFLAGS -u CARGO_PKG_NAME \
             RUSTFLAGS=… cargo build --release -p pgset-agent \
             --bin pgset-agent --target x86_64-unknown-linux-gnu --target-dir /src/target/image)"
        );
        assert_eq!(
            cmd.get_envs(),
            [("RUSTFLAGS".into(), "-C target-feature=+crt-static".into())]
        );
        assert_eq!(
            image_target_dir(&cargo_target_dir(
                Path::new("/src"),
                Some("/var/lib/lab/target".into())
            )),
            Path::new("/var/lib/lab/target/image"),
            "CARGO_TARGET_DIR is honoured"
        );
        assert_eq!(
            cargo_target_dir(Path::new("/src"), Some("".into())),
            Path::new("/src/target")
        );
        assert_eq!(
            built_path(Path::new("/t")),
            Path::new("/t/x86_64-unknown-linux-gnu/release/pgset-agent")
        );
    }

    #[test]
    fn only_the_enclosing_packages_variables_are_dropped() {
        for name in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
        ] {
            assert!(is_enclosing_package_var(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "PATH",
            "RUSTUP_TOOLCHAIN",
        ] {
            assert!(!is_enclosing_package_var(name), "{name}");
        }
    }
}
