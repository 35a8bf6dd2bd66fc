//! The entry points hold together: `cargo xtask` runs `test` itself, hands `bench` and `vagrant`
//! to the developer tools' binary (`pgset-devtools`) and every other command to the `pgset`
//! binary, which carries no developer tool; no command is listed by two of them.

use clap::{CommandFactory, Parser};

/// (name, description, hidden) of each subcommand.
fn listing(command: &clap::Command) -> Vec<(String, String, bool)> {
    command
        .get_subcommands()
        .map(|s| {
            (
                s.get_name().to_owned(),
                s.get_about().map(|a| a.to_string()).unwrap_or_default(),
                s.is_hide_set(),
            )
        })
        .collect()
}

/// Where `cargo xtask ARGV` goes: the binary and the arguments it gets, or `None` when xtask
/// runs it itself.
fn handed(argv: &[&str]) -> Option<(&'static str, Vec<String>)> {
    let cli = xtask::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    cli.handed_to().map(|(bin, args)| {
        let args = args
            .iter()
            .map(|a| a.to_str().unwrap().to_owned())
            .collect();
        (bin, args)
    })
}

#[test]
fn cargo_xtask_hands_every_pgset_command_to_pgset_and_lists_none_of_them() {
    let pgset = listing(&pgset_cli::Cli::command());
    assert!(pgset.len() >= 15, "{pgset:?}");
    for (name, _, hidden) in &pgset {
        assert!(!hidden, "pgset hides `{name}`");
        assert_eq!(
            handed(&["cargo xtask", name, "--some-flag"]),
            Some(("pgset", vec![name.clone(), "--some-flag".into()])),
            "`cargo xtask {name}`"
        );
    }
    let xtask: Vec<String> = listing(&xtask::Cli::command())
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(
        xtask,
        ["test", "bench", "vagrant", "help"],
        "xtask's own tasks"
    );
    for own in &xtask {
        assert!(
            !pgset.iter().any(|(p, _, _)| p == own),
            "pgset and xtask both have `{own}`"
        );
    }
    assert_eq!(handed(&["cargo xtask", "test", "--quick"]), None);
}

#[test]
fn the_developer_tools_are_pgset_devtools_as_it_describes_them() {
    let tools = listing(&pgset_devtools::Tools::command());
    let xtask = listing(&xtask::Cli::command());
    let names: Vec<&str> = tools.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["bench", "vagrant"]);
    for (name, about, _) in &tools {
        let found = xtask.iter().find(|(n, _, _)| n == name);
        assert_eq!(
            found.map(|(_, a, _)| a),
            Some(about),
            "`{name}`'s description"
        );
        assert_eq!(
            handed(&["cargo xtask", name, "--help"]),
            Some(("pgset-devtools", vec![name.clone(), "--help".into()]))
        );
        assert!(
            pgset_cli::Cli::command().find_subcommand(name).is_none(),
            "the pgset binary carries `{name}`"
        );
    }
}
