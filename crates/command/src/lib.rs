//! The one way to run a host command: a [`HostCommand`] value, one log line (`$ <command>`,
//! shell-quoted, environment values never shown), one [`Error`] naming the command, its exit
//! status and the tail of its output, and a [`Runner`] whose dry run prints and runs nothing.
//!
//! Only this crate's `spawn` module may start a process: the workspace's
//! `clippy.toml` forbids `std::process::Command::new`, `tokio::process::Command::new` and
//! `duct::cmd` everywhere else.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;

mod spawn;
pub mod steps;

pub use duct::{Handle, ReaderHandle};

/// How many trailing lines of a failed command's output its error repeats.
pub const TAIL_LINES: usize = 40;

/// A host command: program, arguments, environment set and removed, working directory and the
/// bytes fed on stdin (stdin is empty otherwise). Built, then run by one of its methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    program: OsString,
    args: Vec<OsString>,
    env_set: Vec<(OsString, OsString)>,
    env_removed: Vec<OsString>,
    dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    quiet: bool,
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
            stdin: None,
            quiet: false,
        }
    }

    /// Appends one argument. Never a secret: arguments are visible to every user of the host.
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

    /// Sets an environment variable of the child. Its value is never logged.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> HostCommand {
        self.env_set
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Removes a variable the child would otherwise inherit.
    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> HostCommand {
        self.env_removed.push(name.as_ref().to_owned());
        self
    }

    /// Runs the command in `dir`.
    pub fn dir(mut self, dir: impl AsRef<Path>) -> HostCommand {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Feeds `input` on stdin (never logged: SQL that carries a password goes this way).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> HostCommand {
        self.stdin = Some(input.into());
        self
    }

    /// Does not log the command before it runs (probes that run every second, test helpers).
    pub fn quiet(mut self) -> HostCommand {
        self.quiet = true;
        self
    }

    /// The program.
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// The arguments.
    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    /// The variables set for the child, with their values (which the log never shows).
    pub fn get_envs(&self) -> &[(OsString, OsString)] {
        &self.env_set
    }

    /// The line logged before the command runs, through [`log_with`]'s sink.
    fn log(&self) {
        if !self.quiet {
            log_line(&format!("$ {self}"));
        }
    }

    /// The error for a command that could not be started.
    fn not_started(&self, e: &std::io::Error) -> Error {
        Error {
            command: self.to_string(),
            status: format!("could not start: {e}"),
            output: Some(String::new()),
        }
    }
}

/// The command as a shell line: `(cd DIR && env -u NAME NAME=… program args)`. Words are quoted
/// with shlex; environment values are never shown (only the names), so a secret passed in the
/// environment cannot reach a log.
impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::new();
        if !self.env_removed.is_empty() {
            words.push("env".to_owned());
            for name in &self.env_removed {
                words.push(format!("-u {}", shell_word(name)));
            }
        }
        for (name, _) in &self.env_set {
            words.push(format!("{}=…", name.to_string_lossy()));
        }
        words.push(shell_word(&self.program));
        words.extend(self.args.iter().map(|a| shell_word(a)));
        match &self.dir {
            Some(dir) => write!(
                f,
                "(cd {} && {})",
                shell_word(dir.as_os_str()),
                words.join(" ")
            ),
            None => f.write_str(&words.join(" ")),
        }
    }
}

/// One word, quoted for a POSIX shell when it needs to be (shlex); a word no shell can hold (a
/// NUL byte) is shown Rust-escaped.
fn shell_word(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    match shlex::try_quote(&word) {
        Ok(quoted) => quoted.into_owned(),
        Err(_) => format!("{word:?}"),
    }
}

/// A host command that failed: the command line, its exit status in words and the tail of what
/// it printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{command}` failed ({status}){}", output_suffix(.output.as_deref()))]
pub struct Error {
    /// The shell-quoted command line ([`HostCommand`]'s `Display`).
    pub command: String,
    /// `exit status 3`, `killed by signal 9`, `could not start: …`.
    pub status: String,
    /// The last [`TAIL_LINES`] lines of its stderr (of its stdout when stderr was empty),
    /// trimmed; `None` when its output went to the terminal.
    pub output: Option<String>,
}

fn output_suffix(output: Option<&str>) -> String {
    match output {
        None => " (its output is above)".to_owned(),
        Some("") => String::new(),
        Some(text) => format!(": {text}"),
    }
}

/// The result of running a host command.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// How it ended (the default is success, for runners that run nothing).
    pub status: ExitStatus,
    /// Its stdout (lossy UTF-8).
    pub stdout: String,
    /// Its stderr (lossy UTF-8).
    pub stderr: String,
}

impl Output {
    /// True when it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The output when the command succeeded, else the [`Error`] naming `cmd`, the status and
    /// the tail of stderr (of stdout when stderr is empty).
    pub fn checked(self, cmd: &HostCommand) -> Result<Output> {
        if self.success() {
            return Ok(self);
        }
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        Err(Error {
            command: cmd.to_string(),
            status: status_words(self.status),
            output: Some(tail(text)),
        })
    }
}

/// `exit status 3` / `killed by signal 9`.
pub fn status_words(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".to_owned(),
    }
}

/// The exit code a shell would report: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// `text` trimmed, at most its last [`TAIL_LINES`] lines.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

static LOG_SINK: OnceLock<fn(&str)> = OnceLock::new();

/// Sends every command's log line (`$ <command>`, and the lines of a streamed command's output)
/// to `sink` instead of stderr (the in-pod agent puts its timestamp in front, the CLI writes
/// them through its progress reporter). The first call wins; it is meant for a program's `main`.
pub fn log_with(sink: fn(&str)) {
    let _ = LOG_SINK.set(sink);
}

/// Hands one log line to the sink given to [`log_with`]; without one it is not said (a
/// library never prints: the program's `main` says where its lines go).
pub(crate) fn log_line(line: &str) {
    if let Some(sink) = LOG_SINK.get() {
        sink(line);
    }
}

/// Runs the commands of a plan: read-only probes, and changes that a dry run shows instead of
/// running. [`Executor`] runs them on the host; a test may record them instead.
pub trait Runner {
    /// Runs a read-only command and returns its output whatever its exit status (for a probe a
    /// non-zero status is an answer). Runs in a dry run too: a dry run never invents probe output.
    fn probe(&self, cmd: &HostCommand) -> Result<Output>;

    /// Runs a command that changes the host; fails unless it exits with status 0. A dry run
    /// logs it and runs nothing.
    fn change(&self, cmd: &HostCommand) -> Result<Output>;
}

/// The host's [`Runner`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Executor {
    /// Log changes as `$ <command>  # dry run: not run` and run none of them.
    pub dry_run: bool,
    /// Also log the probes (changes are always logged).
    pub log_probes: bool,
}

impl Executor {
    /// The executor that logs every change and runs none.
    pub fn dry() -> Executor {
        Executor {
            dry_run: true,
            log_probes: false,
        }
    }
}

impl Runner for Executor {
    fn probe(&self, cmd: &HostCommand) -> Result<Output> {
        if self.log_probes {
            cmd.log();
        }
        cmd.clone().quiet().output()
    }

    fn change(&self, cmd: &HostCommand) -> Result<Output> {
        if self.dry_run {
            spawn::log_dry_run(cmd);
            return Ok(Output::default());
        }
        cmd.output()?.checked(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_line_quotes_words_and_hides_env_values() {
        let cmd = HostCommand::new("cargo")
            .args([
                "build",
                "-p",
                "pgset agent",
                "it's",
                "--add-service=nfs",
                "",
            ])
            .env("PGPASSWORD", "s3cret value")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        let line = cmd.to_string();
        assert_eq!(
            line,
            "env -u CARGO_ENCODED_RUSTFLAGS PGPASSWORD=… cargo build -p 'pgset agent' \"it's\" \
             '--add-service=nfs' ''"
        );
        assert!(!line.contains("s3cret"));
        let in_dir = HostCommand::new("ls").dir("/a b").arg("-l");
        assert_eq!(in_dir.to_string(), "(cd '/a b' && ls -l)");
        // Stdin bytes are never part of the line.
        let fed = HostCommand::new("psql").stdin("ALTER ROLE x PASSWORD 'p'");
        assert_eq!(fed.to_string(), "psql");
    }

    #[test]
    fn the_error_names_command_status_and_tail() {
        let e = Error {
            command: "sh -c 'exit 3'".into(),
            status: "exit status 3".into(),
            output: Some("the reason".into()),
        };
        assert_eq!(
            e.to_string(),
            "`sh -c 'exit 3'` failed (exit status 3): the reason"
        );
        let attached = Error {
            output: None,
            ..e.clone()
        };
        assert_eq!(
            attached.to_string(),
            "`sh -c 'exit 3'` failed (exit status 3) (its output is above)"
        );
        let silent = Error {
            output: Some(String::new()),
            ..e
        };
        assert_eq!(
            silent.to_string(),
            "`sh -c 'exit 3'` failed (exit status 3)"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines_trimmed() {
        let text: String = (1..=100).map(|i| format!("line{i}\n")).collect();
        let t = tail(&format!("\n\n{text}\n  "));
        assert!(t.starts_with("line61\n"), "{t}");
        assert!(t.ends_with("line100"), "{t}");
        assert_eq!(t.lines().count(), TAIL_LINES);
    }
}
