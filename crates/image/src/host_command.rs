//! The command wrapper of the image task: logs the shell-escaped command line before it runs and
//! reports command, exit status and trimmed stderr when it fails.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

/// How many trailing output lines a failed streamed command repeats in its error.
const FAILURE_TAIL_LINES: usize = 40;

/// A host command: program, arguments, environment changes and working directory.
#[derive(Debug, Clone)]
pub struct HostCommand {
    program: OsString,
    args: Vec<OsString>,
    env_set: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
    dir: Option<PathBuf>,
}

impl HostCommand {
    /// A command running `program` (a name looked up on PATH, or a path).
    pub fn new(program: impl AsRef<OsStr>) -> HostCommand {
        HostCommand {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env_set: Vec::new(),
            env_removed: Vec::new(),
            dir: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> HostCommand {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> HostCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> HostCommand {
        self.env_set
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Removes an environment variable the command would otherwise inherit.
    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> HostCommand {
        self.env_removed.push(name.as_ref().to_owned());
        self
    }

    /// Runs the command in `dir`.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> HostCommand {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    fn expression(&self) -> duct::Expression {
        let mut expr = duct::cmd(&self.program, &self.args);
        for name in &self.env_removed {
            expr = expr.env_remove(name);
        }
        for (name, value) in &self.env_set {
            expr = expr.env(name, value);
        }
        if let Some(dir) = &self.dir {
            expr = expr.dir(dir);
        }
        expr.unchecked()
    }

    fn log(&self) {
        eprintln!("+ {self}");
    }

    /// Runs the command with stdout and stderr captured; returns stdout. A non-zero exit is an
    /// error carrying the command line, the status and the trimmed stderr.
    pub fn output(&self) -> Result<String> {
        self.log();
        let output = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .run()
            .with_context(|| format!("could not start `{self}`"))?;
        if !output.status.success() {
            return Err(anyhow!(
                "`{self}` failed with {}: {}",
                output.status,
                trimmed(&String::from_utf8_lossy(&output.stderr))
            ));
        }
        String::from_utf8(output.stdout)
            .with_context(|| format!("`{self}` printed output that is not UTF-8"))
    }

    /// Runs a long command, echoing its combined output line by line as it comes; on a
    /// non-zero exit the error repeats the command, the status and the last lines of output.
    pub fn stream(&self) -> Result<()> {
        self.log();
        let reader = self
            .expression()
            .stderr_to_stdout()
            .reader()
            .with_context(|| format!("could not start `{self}`"))?;
        let mut tail = VecDeque::with_capacity(FAILURE_TAIL_LINES);
        let mut lines = BufReader::new(&reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = lines
                .read_until(b'\n', &mut line)
                .with_context(|| format!("read the output of `{self}`"))?;
            if read == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            eprintln!("    {text}");
            if tail.len() == FAILURE_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text);
        }
        let output = reader
            .try_wait()
            .with_context(|| format!("wait for `{self}`"))?
            .ok_or_else(|| anyhow!("`{self}` closed its output but did not exit"))?;
        if !output.status.success() {
            let tail: Vec<String> = tail.into_iter().collect();
            return Err(anyhow!(
                "`{self}` failed with {}: {}",
                output.status,
                trimmed(&tail.join("\n"))
            ));
        }
        Ok(())
    }
}

/// The command as a shell line: changed environment first, then program and arguments.
impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::new();
        if !self.env_removed.is_empty() {
            words.push("env".to_owned());
            for name in &self.env_removed {
                words.push(format!("-u {}", shell_word(name)));
            }
        }
        for (name, value) in &self.env_set {
            words.push(format!("{}={}", name.to_string_lossy(), shell_word(value)));
        }
        words.push(shell_word(&self.program));
        words.extend(self.args.iter().map(|a| shell_word(a)));
        if let Some(dir) = &self.dir {
            write!(f, "(cd {} && ", shell_word(dir.as_os_str()))?;
            write!(f, "{})", words.join(" "))
        } else {
            f.write_str(&words.join(" "))
        }
    }
}

/// One word, quoted for a POSIX shell when it needs to be.
fn shell_word(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    match shlex::try_quote(&word) {
        Ok(quoted) => quoted.into_owned(),
        Err(_) => format!("{word:?}"),
    }
}

/// Output shortened for an error message: surrounding blank space removed, at most the last
/// lines kept.
fn trimmed(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(no output)".to_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(FAILURE_TAIL_LINES);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_line_quotes_what_needs_quoting() {
        let cmd = HostCommand::new("cargo")
            .args(["build", "-p", "pgset agent"])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        assert_eq!(
            cmd.to_string(),
            "env -u CARGO_ENCODED_RUSTFLAGS RUSTFLAGS='-C target-feature=+crt-static' cargo build -p 'pgset agent'"
        );
        let in_dir = HostCommand::new("ls").dir("/a b");
        assert_eq!(in_dir.to_string(), "(cd '/a b' && ls)");
    }

    #[test]
    fn output_returns_stdout_of_a_successful_command() {
        let out = HostCommand::new("sh")
            .args(["-c", "echo \"$GREETING\"; echo noise >&2"])
            .env("GREETING", "hello")
            .output()
            .unwrap();
        assert_eq!(out, "hello\n");
    }

    #[test]
    fn a_failure_names_the_command_status_and_stderr() {
        let err = HostCommand::new("sh")
            .args(["-c", "echo first >&2; echo 'the reason' >&2; exit 3"])
            .output()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`sh -c"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("first\nthe reason"), "{err}");
    }

    #[test]
    fn a_streamed_failure_repeats_the_last_lines() {
        let err = HostCommand::new("sh")
            .args(["-c", "for i in $(seq 1 100); do echo line$i; done; exit 7"])
            .stream()
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status: 7"), "{err}");
        assert!(err.contains("line100"), "{err}");
        assert!(err.contains("line61"), "{err}");
        assert!(!err.contains("line60\n"), "{err}");
        HostCommand::new("true").stream().unwrap();
    }

    #[test]
    fn a_missing_program_is_reported_by_name() {
        let err = HostCommand::new("pgset-no-such-program")
            .output()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("could not start `pgset-no-such-program`"),
            "{err:#}"
        );
    }
}
