//! The one wrapper through which host commands run: logged shell-escaped before they start,
//! reported with command, exit status and trimmed stderr when they fail.

use std::fmt;

use crate::{Error, Result};

/// A command to run on the host: program, arguments and extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl HostCommand {
    /// A command with its arguments.
    pub fn new<I, S>(program: &str, args: I) -> HostCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        HostCommand {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> HostCommand {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The program.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

impl fmt::Display for HostCommand {
    /// The command line as a shell would need it, environment first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        words.push(shell_quote(&self.program));
        words.extend(self.args.iter().map(|a| shell_quote(a)));
        f.write_str(&words.join(" "))
    }
}

/// Quotes a word for a POSIX shell: unchanged when it has only safe characters, else in single
/// quotes.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What a finished command printed, and whether it succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CommandOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The output when the command succeeded, else the error naming the command, its exit
    /// status and its trimmed stderr.
    pub fn checked(self, cmd: &HostCommand) -> Result<CommandOutput> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::Command {
                command: cmd.to_string(),
                status: self.status_words(),
                stderr: self.stderr.trim().to_string(),
            })
        }
    }

    fn status_words(&self) -> String {
        match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        }
    }
}

/// Runs host commands. [`Duct`] runs them for real; tests may record them instead.
pub trait CommandRunner {
    /// Runs `cmd` and returns its output whatever its exit status (for probes, where a non-zero
    /// status is an answer). A program that cannot start is an error.
    fn output(&self, cmd: &HostCommand) -> Result<CommandOutput>;

    /// Runs `cmd` and fails unless it exits with status 0.
    fn run(&self, cmd: &HostCommand) -> Result<CommandOutput> {
        self.output(cmd)?.checked(cmd)
    }
}

/// Runs commands with `duct`, logging each one on stderr before it starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Duct {
    /// Also log read-only probe commands (apply commands are always logged).
    pub log_probes: bool,
}

impl Duct {
    fn exec(&self, cmd: &HostCommand) -> Result<CommandOutput> {
        let mut expr = duct::cmd(&cmd.program, &cmd.args)
            .stdin_null()
            .stdout_capture()
            .stderr_capture()
            .unchecked();
        for (k, v) in &cmd.env {
            expr = expr.env(k, v);
        }
        let out = expr.run().map_err(|e| Error::Command {
            command: cmd.to_string(),
            status: "could not start".to_string(),
            stderr: e.to_string(),
        })?;
        Ok(CommandOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl CommandRunner for Duct {
    fn output(&self, cmd: &HostCommand) -> Result<CommandOutput> {
        if self.log_probes {
            eprintln!("    $ {cmd}");
        }
        self.exec(cmd)
    }

    fn run(&self, cmd: &HostCommand) -> Result<CommandOutput> {
        eprintln!("    $ {cmd}");
        let out = self.exec(cmd)?.checked(cmd);
        if let Err(e) = &out {
            eprintln!("    failed: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("exportfs"), "exportfs");
        assert_eq!(shell_quote("--add-service=nfs"), "--add-service=nfs");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("${HOME}"), "'${HOME}'");
    }

    #[test]
    fn display_puts_env_first_and_quotes() {
        let c = HostCommand::new("apt-get", ["install", "-y", "x y"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        assert_eq!(
            c.to_string(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y 'x y'"
        );
    }

    #[test]
    fn duct_reports_command_status_and_stderr() {
        let runner = Duct::default();
        let err = runner
            .run(&HostCommand::new(
                "sh",
                ["-c", "echo '  broken thing  ' >&2; exit 3"],
            ))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sh -c"), "{err}");
        assert!(err.contains("exit status 3"), "{err}");
        assert!(err.ends_with(": broken thing"), "{err}");
        let ok = runner
            .output(&HostCommand::new("sh", ["-c", "echo out; exit 1"]))
            .unwrap();
        assert_eq!((ok.code, ok.stdout.as_str()), (Some(1), "out\n"));
        let missing = runner
            .output(&HostCommand::new(
                "pgset-no-such-program",
                Vec::<String>::new(),
            ))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("could not start"), "{missing}");
    }
}
