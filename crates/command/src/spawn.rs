//! Starting processes: the only module of the workspace allowed to (see `clippy.toml`).
//! Every run logs the command first (unless quiet) and turns a failure into one [`Error`].

// This module is the one place that may start a process; everywhere else clippy refuses it.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;

use crate::{Error, HostCommand, Output, Result, TAIL_LINES, log_line, status_words, tail};

/// What a command's stdin is when it was given no bytes.
#[derive(Clone, Copy)]
enum NoStdin {
    /// Nothing to read (`/dev/null`): captured and background runs.
    Null,
    /// This process's own stdin: runs attached to the terminal.
    Inherited,
}

/// A process builder the command sets up: duct's expression for every run, the standard
/// library's `Command` for [`HostCommand::exec`] (duct cannot replace this process).
trait ProcessBuilder: Sized {
    fn env_remove(self, name: &OsStr) -> Self;
    fn env(self, name: &OsStr, value: &OsStr) -> Self;
    fn dir(self, dir: &Path) -> Self;
}

impl ProcessBuilder for duct::Expression {
    fn env_remove(self, name: &OsStr) -> Self {
        duct::Expression::env_remove(&self, name)
    }
    fn env(self, name: &OsStr, value: &OsStr) -> Self {
        duct::Expression::env(&self, name, value)
    }
    fn dir(self, dir: &Path) -> Self {
        duct::Expression::dir(&self, dir)
    }
}

impl ProcessBuilder for Command {
    fn env_remove(mut self, name: &OsStr) -> Self {
        Command::env_remove(&mut self, name);
        self
    }
    fn env(mut self, name: &OsStr, value: &OsStr) -> Self {
        Command::env(&mut self, name, value);
        self
    }
    fn dir(mut self, dir: &Path) -> Self {
        self.current_dir(dir);
        self
    }
}

impl HostCommand {
    /// The one place a process is set up: the variables removed, then those set, then the
    /// working directory, on whichever builder starts it.
    fn set_up<B: ProcessBuilder>(&self, mut process: B) -> B {
        for name in &self.env_removed {
            process = process.env_remove(name);
        }
        for (name, value) in &self.env_set {
            process = process.env(name, value);
        }
        if let Some(dir) = &self.dir {
            process = process.dir(dir);
        }
        process
    }

    /// The duct expression of every run: program, arguments, environment, directory and stdin
    /// (the given bytes, else `no_stdin`); never checked by duct (the status is judged here).
    fn expression_with(&self, no_stdin: NoStdin) -> duct::Expression {
        let expr = self.set_up(duct::cmd(&self.program, &self.args));
        let expr = match (&self.stdin, no_stdin) {
            (Some(bytes), _) => expr.stdin_bytes(bytes.clone()),
            (None, NoStdin::Null) => expr.stdin_null(),
            (None, NoStdin::Inherited) => expr,
        };
        expr.unchecked()
    }

    /// The expression of a run that reads nothing unless given bytes.
    fn expression(&self) -> duct::Expression {
        self.expression_with(NoStdin::Null)
    }

    /// Replaces this process with the command (Unix `exec`): its stdin, stdout and stderr, its
    /// signals and its exit code become the command's own. Returns only when it could not be
    /// started. Not logged: the command speaks for itself.
    pub fn exec(&self) -> Error {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        let mut command = self.set_up(command);
        self.not_started(&command.exec())
    }

    /// Runs it with stdout and stderr captured and returns them whatever the exit status; only
    /// a program that cannot start is an error.
    pub fn output(&self) -> Result<Output> {
        self.log();
        let out = self
            .expression()
            .stdout_capture()
            .stderr_capture()
            .run()
            .map_err(|e| self.not_started(&e))?;
        Ok(Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs it captured and returns its stdout; a non-zero exit is an error carrying the tail of
    /// stderr.
    pub fn read(&self) -> Result<String> {
        Ok(self.output()?.checked(self)?.stdout)
    }

    /// Runs it captured; a non-zero exit is an error carrying the tail of stderr.
    pub fn run(&self) -> Result<()> {
        self.output()?.checked(self).map(drop)
    }

    /// Runs it with the terminal attached (stdin, stdout and stderr inherited: prompts, shells,
    /// a long build's own progress); a non-zero exit is an error.
    pub fn run_attached(&self) -> Result<()> {
        self.log();
        let out = self
            .expression_with(NoStdin::Inherited)
            .run()
            .map_err(|e| self.not_started(&e))?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error {
            command: self.to_string(),
            status: status_words(out.status),
            output: None,
        })
    }

    /// Runs a long command, echoing its combined output line by line (indented) on stderr as it
    /// comes; a non-zero exit is an error repeating the last lines.
    pub fn stream(&self) -> Result<()> {
        self.log();
        let reader = self
            .expression()
            .stderr_to_stdout()
            .reader()
            .map_err(|e| self.not_started(&e))?;
        let mut last = VecDeque::with_capacity(TAIL_LINES);
        let mut lines = BufReader::new(&reader);
        let mut line = Vec::new();
        let read_error = |e: std::io::Error| Error {
            command: self.to_string(),
            status: format!("its output could not be read: {e}"),
            output: Some(String::new()),
        };
        loop {
            line.clear();
            if lines.read_until(b'\n', &mut line).map_err(read_error)? == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            crate::log_line(&text);
            if last.len() == TAIL_LINES {
                last.pop_front();
            }
            last.push_back(text);
        }
        let status = match reader.try_wait().map_err(read_error)? {
            Some(out) => out.status,
            None => {
                return Err(Error {
                    command: self.to_string(),
                    status: "closed its output but did not exit".to_owned(),
                    output: Some(String::new()),
                });
            }
        };
        if status.success() {
            return Ok(());
        }
        let last: Vec<String> = last.into_iter().collect();
        Err(Error {
            command: self.to_string(),
            status: status_words(status),
            output: Some(tail(&last.join("\n"))),
        })
    }

    /// Runs it with stdout and stderr appended to `log` (for launchers such as `setsid -f` that
    /// return once the real process is detached); a non-zero exit is an error.
    pub fn run_logging_to(&self, log: File) -> Result<()> {
        self.log();
        let out = self
            .expression()
            .stderr_to_stdout()
            .stdout_file(log)
            .run()
            .map_err(|e| self.not_started(&e))?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error {
            command: self.to_string(),
            status: status_words(out.status),
            output: Some(String::new()),
        })
    }

    /// Starts it in the background with stdout and stderr merged into a pipe the caller reads.
    pub fn start_reader(&self) -> Result<duct::ReaderHandle> {
        self.log();
        self.expression()
            .stderr_to_stdout()
            .reader()
            .map_err(|e| self.not_started(&e))
    }

    /// Starts it in the background with stdout and stderr captured (read them from the handle's
    /// output once it exits).
    pub fn start(&self) -> Result<duct::Handle> {
        self.log();
        self.expression()
            .stdout_capture()
            .stderr_capture()
            .start()
            .map_err(|e| self.not_started(&e))
    }

    /// Starts it in the background with stdout and stderr written to `log`.
    pub fn start_logging_to(&self, log: File) -> Result<duct::Handle> {
        self.log();
        self.expression()
            .stderr_to_stdout()
            .stdout_file(log)
            .start()
            .map_err(|e| self.not_started(&e))
    }
}

/// Logged by the caller of [`HostCommand::log`]: the runner's dry-run line.
pub(crate) fn log_dry_run(cmd: &HostCommand) {
    log_line(&format!("$ {cmd}  # dry run: not run"));
}

#[cfg(test)]
mod tests {
    use crate::{Executor, HostCommand, Runner};

    #[test]
    fn output_read_and_run() {
        let out = HostCommand::new("sh")
            .args(["-c", "echo \"$GREETING\"; cat; echo noise >&2; exit 1"])
            .env("GREETING", "hello")
            .stdin("fed")
            .quiet()
            .output()
            .unwrap();
        assert_eq!(
            (out.status.code(), out.stdout.as_str(), out.stderr.as_str()),
            (Some(1), "hello\nfed", "noise\n")
        );
        let pwd = HostCommand::new("pwd").dir("/").quiet().read().unwrap();
        assert_eq!(pwd, "/\n");
        let removed = HostCommand::new("sh")
            .args(["-c", "echo ${HOME-unset}"])
            .env_remove("HOME")
            .quiet()
            .read()
            .unwrap();
        assert_eq!(removed, "unset\n");
        HostCommand::new("true").run().unwrap();
    }

    #[test]
    fn a_failure_names_the_command_status_and_the_tail_of_stderr() {
        let err = HostCommand::new("sh")
            .args([
                "-c",
                "echo out; echo '  first' >&2; echo 'the reason  ' >&2; exit 3",
            ])
            .quiet()
            .run()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c \"echo out; echo '  first' >&2; echo 'the reason  ' >&2; exit 3\"` \
             failed (exit status 3): first\nthe reason"
        );
        // Without stderr, stdout says why.
        let err = HostCommand::new("sh")
            .args(["-c", "echo only-stdout; exit 2"])
            .read()
            .unwrap_err();
        assert_eq!(err.output.as_deref(), Some("only-stdout"));
        let missing = HostCommand::new("pgset-no-such-program")
            .output()
            .unwrap_err();
        assert_eq!(missing.command, "pgset-no-such-program");
        assert!(missing.status.starts_with("could not start"), "{missing}");
        let killed = HostCommand::new("sh")
            .args(["-c", "kill -9 $$"])
            .run()
            .unwrap_err();
        assert_eq!(killed.status, "killed by signal 9");
    }

    #[test]
    fn a_streamed_failure_repeats_the_last_lines() {
        let err = HostCommand::new("sh")
            .args(["-c", "for i in $(seq 1 100); do echo line$i; done; exit 7"])
            .stream()
            .unwrap_err();
        assert_eq!(err.status, "exit status 7");
        let output = err.output.unwrap();
        assert!(output.starts_with("line61\n"), "{output}");
        assert!(output.ends_with("line100"), "{output}");
        HostCommand::new("true").stream().unwrap();
    }

    #[test]
    fn an_attached_failure_points_at_the_output_above() {
        let err = HostCommand::new("sh")
            .args(["-c", "exit 4"])
            .run_attached()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`sh -c 'exit 4'` failed (exit status 4) (its output is above)"
        );
        HostCommand::new("true").run_attached().unwrap();
    }

    #[test]
    fn an_attached_run_gets_the_same_environment_directory_and_stdin() {
        let check = "test \"$(cat)\" = fed && test \"$GREETING\" = hello \
                     && test \"$(pwd)\" = / && test -z \"${HOME+set}\"";
        let attached = |greeting: &str| {
            HostCommand::new("sh")
                .args(["-c", check])
                .env("GREETING", greeting)
                .env_remove("HOME")
                .dir("/")
                .stdin("fed")
                .quiet()
                .run_attached()
        };
        attached("hello").unwrap();
        let err = attached("other").unwrap_err();
        assert_eq!(err.status, "exit status 1");
    }

    #[test]
    fn an_exec_that_cannot_start_says_so_and_returns() {
        let err = HostCommand::new("pgset-no-such-program")
            .arg("x")
            .env("GREETING", "hello")
            .dir("/")
            .exec();
        assert_eq!(err.command, "(cd / && GREETING=… pgset-no-such-program x)");
        assert!(err.status.starts_with("could not start"), "{err}");
    }

    #[test]
    fn logging_to_a_file_and_in_the_background() {
        let dir = std::env::temp_dir().join(format!("pgset-command-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("out.log");
        let file = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap()
        };
        HostCommand::new("sh")
            .args(["-c", "echo one; echo two >&2"])
            .run_logging_to(file())
            .unwrap();
        let handle = HostCommand::new("sh")
            .args(["-c", "echo three"])
            .start_logging_to(file())
            .unwrap();
        assert!(handle.wait().unwrap().status.success());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\nthree\n");
        let started = HostCommand::new("sh")
            .args(["-c", "echo four; exit 5"])
            .start()
            .unwrap();
        let out = started.wait().unwrap();
        assert_eq!(
            (out.status.code(), &out.stdout[..]),
            (Some(5), &b"four\n"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dry_run_runs_no_change_but_runs_probes() {
        let dir = std::env::temp_dir().join(format!("pgset-command-dry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let make = HostCommand::new("mkdir").arg(&dir);
        let out = Executor::dry().change(&make).unwrap();
        assert!(out.success());
        assert!(!dir.exists(), "a dry run created {}", dir.display());
        let probe = Executor::dry()
            .probe(&HostCommand::new("sh").args(["-c", "echo answer; exit 1"]))
            .unwrap();
        assert_eq!(
            (probe.status.code(), probe.stdout.as_str()),
            (Some(1), "answer\n")
        );
        let wet = Executor::default();
        wet.change(&make).unwrap();
        assert!(dir.is_dir());
        let err = wet.change(&make).unwrap_err();
        assert!(
            err.status == "exit status 1" && err.output.as_deref().unwrap().contains("exists"),
            "{err}"
        );
        std::fs::remove_dir(&dir).unwrap();
    }
}
