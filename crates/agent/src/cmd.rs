//! The one wrapper over duct for every host command the agent runs: it logs the shell-escaped
//! command before running it, and a failure carries the command, exit status and trimmed stderr.
//! Secrets never travel in arguments: they go through stdin or files, which are not logged.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Output};

use crate::{Error, Result};

/// A host command, built then run once.
#[derive(Debug, Clone)]
pub struct HostCommand {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    quiet: bool,
}

impl HostCommand {
    /// A command running `program`.
    pub fn new(program: impl AsRef<Path>) -> HostCommand {
        HostCommand {
            program: program.as_ref().as_os_str().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            stdin: None,
            quiet: false,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> HostCommand {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, A>(mut self, args: I) -> HostCommand
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the child (values are not logged).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> HostCommand {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Feeds `input` on stdin (not logged: SQL that carries a password goes this way).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> HostCommand {
        self.stdin = Some(input.into());
        self
    }

    /// Does not log the command before running it (for probes that run every second).
    pub fn quiet(mut self) -> HostCommand {
        self.quiet = true;
        self
    }

    /// The shell-escaped command line.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The duct expression, without redirections.
    pub fn expression(&self) -> duct::Expression {
        let mut e = duct::cmd(&self.program, &self.args);
        for (k, v) in &self.envs {
            e = e.env(k, v);
        }
        match &self.stdin {
            Some(bytes) => e.stdin_bytes(bytes.clone()),
            None => e.stdin_null(),
        }
    }

    fn log(&self) {
        if !self.quiet {
            crate::info!("running: {}", self.display());
        }
    }

    /// Runs it, capturing its output, and returns the output whatever the exit status.
    pub fn output(&self) -> Result<Output> {
        self.log();
        self.expression()
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .map_err(|e| self.not_started(e))
    }

    /// Runs it and returns its stdout; a non-zero exit is an error carrying stderr.
    pub fn read(&self) -> Result<String> {
        let out = self.output()?;
        self.check(&out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs it; a non-zero exit is an error carrying stderr.
    pub fn run(&self) -> Result<()> {
        self.read().map(drop)
    }

    fn not_started(&self, e: std::io::Error) -> Error {
        Error::Command {
            command: self.display(),
            status: format!("could not start: {e}"),
            stderr: String::new(),
        }
    }

    /// The error for `out` when its status is not success.
    pub fn check(&self, out: &Output) -> Result<()> {
        if out.status.success() {
            return Ok(());
        }
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        Err(Error::Command {
            command: self.display(),
            status: describe_status(out.status),
            stderr,
        })
    }

    /// Runs it with stdout and stderr appended to `log` (for launchers such as `setsid -f` that
    /// return once the real process is detached); a non-zero exit is an error.
    pub fn run_logging_to(&self, log: std::fs::File) -> Result<()> {
        self.log();
        let out = self
            .expression()
            .stderr_to_stdout()
            .stdout_file(log)
            .unchecked()
            .run()
            .map_err(|e| self.not_started(e))?;
        self.check(&out)
    }

    /// Starts it with stdout and stderr merged into a pipe the caller reads.
    pub fn start_reader(&self) -> Result<duct::ReaderHandle> {
        self.log();
        self.expression()
            .stderr_to_stdout()
            .unchecked()
            .reader()
            .map_err(|e| self.not_started(e))
    }
}

/// `exit status 3` / `killed by signal 9`.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".to_string(),
    }
}

/// The exit code a shell would report: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_shell_escaped() {
        let c = HostCommand::new("/bin/echo")
            .arg("a b")
            .arg("it's")
            .arg("-D/x");
        assert_eq!(c.display(), r"/bin/echo 'a b' 'it'\''s' -D/x");
    }

    #[test]
    fn failure_carries_command_status_and_stderr() {
        let c = HostCommand::new("sh")
            .arg("-c")
            .arg("echo oops >&2; exit 3");
        let e = c.run().unwrap_err().to_string();
        assert!(
            e.contains("exit status 3") && e.contains("oops") && e.contains("sh -c"),
            "{e}"
        );
    }

    #[test]
    fn stdin_is_fed_and_output_read() {
        let out = HostCommand::new("cat")
            .stdin("secret-free input")
            .quiet()
            .read()
            .unwrap();
        assert_eq!(out, "secret-free input");
    }
}
