//! The entry points list the same commands: `cargo xtask` (which runs `test` itself, hands `bench`
//! and `vagrant` to the developer tools' binary and every other task to the `pgset` binary),
//! `pgset`, which carries no developer tool, and `pgset-devtools`.

use clap::CommandFactory;

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

#[test]
fn cargo_xtask_lists_every_pgset_command_as_pgset_describes_it() {
    let xtask = listing(&xtask::Cli::command());
    let pgset = listing(&pgset_cli::Cli::command());
    assert!(pgset.len() >= 15, "{pgset:?}");
    for (name, about, _) in &pgset {
        let found = xtask.iter().find(|(n, _, _)| n == name);
        let Some((_, xtask_about, hidden)) = found else {
            panic!("`cargo xtask` does not list pgset's `{name}`");
        };
        assert_eq!(xtask_about, about, "`{name}`'s description");
        assert!(!hidden, "`cargo xtask --help` hides `{name}`");
    }
    let own: Vec<&str> = xtask
        .iter()
        .map(|(n, _, _)| n.as_str())
        .filter(|n| !pgset.iter().any(|(p, _, _)| p == n))
        .collect();
    assert_eq!(
        own,
        ["test", "bench", "vagrant", "help"],
        "tasks pgset does not have"
    );
    let hidden: Vec<&str> = pgset
        .iter()
        .filter(|(_, _, h)| *h)
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert!(hidden.is_empty(), "pgset hides {hidden:?}");
    // The developer tools are listed as their binary describes them.
    let tools = listing(&pgset_devtools::Tools::command());
    let names: Vec<&str> = tools.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["bench", "vagrant"]);
    for (name, about, _) in &tools {
        let found = xtask.iter().find(|(n, _, _)| n == name);
        assert_eq!(
            found.map(|(_, a, _)| a),
            Some(about),
            "`{name}`'s description"
        );
    }
}

#[test]
fn both_entry_points_list_the_commands_in_one_order() {
    let order = |c: &clap::Command| -> Vec<String> {
        c.get_subcommands()
            .map(|s| s.get_name().to_owned())
            .filter(|n| !["test", "bench", "vagrant", "help"].contains(&n.as_str()))
            .collect()
    };
    assert_eq!(
        order(&xtask::Cli::command()),
        order(&pgset_cli::Cli::command())
    );
}
