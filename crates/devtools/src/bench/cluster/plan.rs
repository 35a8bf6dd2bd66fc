//! The cluster benchmark's pure parts: which runs happen in which order, the spec of each
//! measured cluster, medians, and the lines that put each figure beside its target.

use std::time::Duration;

use pgset_spec::{PodManagementPolicy, StorageMode, ValidSpec};

/// Rollout target: pgset's OrderedReady rollout over the bare OrderedReady floor.
pub const ROLLOUT_RATIO_TARGET: f64 = 1.10;
/// Parallel target: pgset's Parallel rollout of [`LARGE`] members over the bare OrderedReady
/// floor of as many pods.
pub const PARALLEL_RATIO_TARGET: f64 = 0.60;
/// Target of a no-change `up`, on top of the cluster's own answer time.
pub const NO_CHANGE_UP_TARGET: Duration = Duration::from_secs(5);
/// The small and the large cluster measured.
pub const SMALL: i32 = 3;
/// See [`SMALL`].
pub const LARGE: i32 = 7;
/// Most rounds one benchmark may ask for.
pub const MAX_ROUNDS: u32 = 20;

/// One measured rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// The floor: a bare OrderedReady StatefulSet of `members` pods running initdb and postgres.
    Bare {
        /// Pods.
        members: i32,
    },
    /// pgset's rollout of `members` members, until every one is Ready and every replica streams.
    Pgset {
        /// Members.
        members: i32,
        /// How the StatefulSet starts them.
        policy: PodManagementPolicy,
    },
}

impl Run {
    /// What the run measures, in the words of its line.
    pub fn label(self) -> String {
        match self {
            Run::Bare { members } => {
                format!("bare StatefulSet (initdb + postgres), {members} Ready, OrderedReady")
            }
            Run::Pgset { members, policy } => {
                format!("pgset deploy, {members} Ready + streaming, {policy}")
            }
        }
    }

    /// The cluster name of this run's pgset cluster in `round` (unique in the bench namespace,
    /// so its members always start from initdb).
    pub fn cluster_name(self, round: u32) -> Option<String> {
        match self {
            Run::Bare { .. } => None,
            Run::Pgset { members, policy } => Some(format!(
                "pgset{members}-{}-{round}",
                match policy {
                    PodManagementPolicy::OrderedReady => "ordered",
                    PodManagementPolicy::Parallel => "parallel",
                }
            )),
        }
    }
}

/// The runs of one round, bare and pgset alternating: the large set first (the floor, pgset
/// OrderedReady, pgset Parallel), then the small one, whose last pgset cluster stays up for
/// the figures measured on a running cluster.
pub fn round_runs() -> [Run; 5] {
    [
        Run::Bare { members: LARGE },
        Run::Pgset {
            members: LARGE,
            policy: PodManagementPolicy::OrderedReady,
        },
        Run::Pgset {
            members: LARGE,
            policy: PodManagementPolicy::Parallel,
        },
        Run::Bare { members: SMALL },
        Run::Pgset {
            members: SMALL,
            policy: PodManagementPolicy::OrderedReady,
        },
    ]
}

/// Every run in order, with its round (from 1): [`round_runs`] once per round.
pub fn run_order(rounds: u32) -> Vec<(u32, Run)> {
    (1..=rounds)
        .flat_map(|r| round_runs().into_iter().map(move |run| (r, run)))
        .collect()
}

/// Checks `--rounds`.
pub fn check_rounds(rounds: u32) -> Result<u32, String> {
    if (1..=MAX_ROUNDS).contains(&rounds) {
        Ok(rounds)
    } else {
        Err(format!(
            "--rounds {rounds}: choose 1..={MAX_ROUNDS} (each round is five rollouts, 27 pods)"
        ))
    }
}

/// The spec of a measured pgset cluster: the user's images and storage choices, the run's own
/// name, the bench namespace, the run's size and policy.
///
/// Per-member NFS volumes need export directories made ahead on the NFS host, which the
/// benchmark does not do; the shared claim does not (each agent makes its directory), so
/// without a StorageClass the cluster uses one shared NFS volume whatever its size. With a
/// StorageClass each member gets a claim of its own from it (templates mode), which is what
/// works on a one-node cluster with a hostPath provisioner.
pub fn bench_spec(
    user: &ValidSpec,
    namespace: &str,
    name: &str,
    members: i32,
    policy: PodManagementPolicy,
) -> pgset_spec::Result<ValidSpec> {
    let mut s = user.clone().into_inner();
    s.name = name.to_string();
    s.namespace = namespace.to_string();
    s.replicas = members;
    s.pod_management_policy = policy;
    s.storage.mode = if s.storage.storage_class.is_some() {
        StorageMode::Templates
    } else {
        StorageMode::Shared
    };
    s.validated()
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}

/// `ok`, or `OVER TARGET`.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "OVER TARGET" }
}

/// How many values a median is of, when more than one.
fn of(n: usize) -> String {
    if n > 1 {
        format!(" (median of {n})")
    } else {
        String::new()
    }
}

/// A floor's line: its label and time.
pub fn floor_line(run: Run, times: &[Duration]) -> String {
    match median(times) {
        Some(t) => format!(
            "{:<58} {:>7.1}s{}",
            run.label(),
            t.as_secs_f64(),
            of(times.len())
        ),
        None => format!("{:<58} {:>8}  not measured", run.label(), "-"),
    }
}

/// A rollout's line beside its floor: the time, the ratio and the target with its verdict.
pub fn ratio_line(
    run: Run,
    times: &[Duration],
    floor: Run,
    floor_times: &[Duration],
    target: f64,
) -> String {
    let floor_name = match floor {
        Run::Bare { members } => format!("bare {members}"),
        Run::Pgset { .. } => floor.label(),
    };
    match (median(times), median(floor_times)) {
        (Some(t), Some(f)) => {
            let ratio = t.as_secs_f64() / f.as_secs_f64().max(f64::EPSILON);
            format!(
                "{:<58} {:>7.1}s  {ratio:.2}x {floor_name} (target <= {target:.2}x) {}{}",
                run.label(),
                t.as_secs_f64(),
                verdict(ratio <= target),
                of(times.len())
            )
        }
        (Some(t), None) => format!(
            "{:<58} {:>7.1}s  no {floor_name} floor to compare with (target <= {target:.2}x)",
            run.label(),
            t.as_secs_f64()
        ),
        (None, _) => format!(
            "{:<58} {:>8}  not measured (target <= {target:.2}x {floor_name})",
            run.label(),
            "-"
        ),
    }
}

/// The no-change `up` beside its target: [`NO_CHANGE_UP_TARGET`] plus the cluster's answer time.
pub fn no_change_up_line(took: Duration, answer: Duration) -> String {
    let target = NO_CHANGE_UP_TARGET + answer;
    format!(
        "{:<58} {:>7.1}s  (target <= {}s + {:.2}s cluster answer = {:.2}s) {}",
        "no-change `up` (the second of two)",
        took.as_secs_f64(),
        NO_CHANGE_UP_TARGET.as_secs(),
        answer.as_secs_f64(),
        target.as_secs_f64(),
        verdict(took <= target)
    )
}

/// A skipped figure's line, with the reason.
pub fn skip_line(what: &str, reason: &str) -> String {
    format!("{what}: skipped: {reason}")
}

/// One rollout's timeline, compactly: a heading naming the run and round, then one line per
/// member (each step, when it began and how long it took).
pub fn timeline_block(run: Run, round: u32, took: Duration, lines: &[String]) -> Vec<String> {
    let mut out = vec![format!(
        "{} (round {round}): {:.1}s; seconds since the apply, each step's length in brackets:",
        run.label(),
        took.as_secs_f64()
    )];
    out.extend(lines.iter().map(|l| format!("  {l}")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgset_spec::ClusterSpec;

    fn user_spec(storage_class: Option<&str>) -> ValidSpec {
        let mut s = ClusterSpec::default();
        if let Some(c) = storage_class {
            s.storage.mode = StorageMode::Templates;
            s.storage.storage_class = Some(c.to_string());
        }
        s.validated().unwrap()
    }

    const NS: &str = "pgset-bench-0000abcd";

    #[test]
    fn each_round_measures_7_and_3_members_ordered_and_7_parallel_bare_and_pgset_alternating() {
        let order = run_order(2);
        assert_eq!(order.len(), 10);
        let ordered = PodManagementPolicy::OrderedReady;
        assert_eq!(
            order[..5],
            [
                (1, Run::Bare { members: 7 }),
                (
                    1,
                    Run::Pgset {
                        members: 7,
                        policy: ordered
                    }
                ),
                (
                    1,
                    Run::Pgset {
                        members: 7,
                        policy: PodManagementPolicy::Parallel
                    }
                ),
                (1, Run::Bare { members: 3 }),
                (
                    1,
                    Run::Pgset {
                        members: 3,
                        policy: ordered
                    }
                ),
            ]
        );
        assert_eq!(
            order[5..].iter().map(|(_, r)| *r).collect::<Vec<_>>(),
            round_runs().to_vec()
        );
        assert!(order[5..].iter().all(|(r, _)| *r == 2));
        // Never two bare runs in a row, never two rounds' pgset runs of one kind in a row.
        for pair in order.windows(2) {
            assert!(
                !(matches!(pair[0].1, Run::Bare { .. }) && matches!(pair[1].1, Run::Bare { .. }))
            );
        }
        // The small ordered pgset cluster ends the order: it stays up for the other figures.
        assert_eq!(
            order.last().unwrap().1,
            Run::Pgset {
                members: 3,
                policy: ordered
            }
        );
    }

    #[test]
    fn rounds_outside_1_to_20_are_refused_with_the_range() {
        assert_eq!(check_rounds(1), Ok(1));
        assert_eq!(check_rounds(20), Ok(20));
        let e = check_rounds(0).unwrap_err();
        assert!(e.contains("--rounds 0: choose 1..=20"), "{e}");
        assert!(check_rounds(21).is_err());
    }

    #[test]
    fn every_pgset_run_of_every_round_has_a_cluster_name_of_its_own() {
        let names: Vec<String> = run_order(3)
            .into_iter()
            .filter_map(|(r, run)| run.cluster_name(r))
            .collect();
        assert_eq!(names.len(), 9);
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 9, "{names:?}");
        assert!(
            names.contains(&"pgset7-parallel-2".to_string()),
            "{names:?}"
        );
        assert_eq!(Run::Bare { members: 7 }.cluster_name(1), None);
    }

    #[test]
    fn bench_specs_of_3_and_7_ordered_and_7_parallel_use_one_shared_nfs_volume_without_a_storage_class()
     {
        let user = user_spec(None);
        for (members, policy) in [
            (3, PodManagementPolicy::OrderedReady),
            (7, PodManagementPolicy::OrderedReady),
            (7, PodManagementPolicy::Parallel),
        ] {
            let s = bench_spec(&user, NS, "pgset7-parallel-1", members, policy).unwrap();
            assert_eq!(s.replicas, members);
            assert_eq!(s.pod_management_policy, policy);
            assert_eq!(s.namespace, NS);
            assert_eq!(s.name, "pgset7-parallel-1");
            assert_eq!(s.storage.mode, StorageMode::Shared);
            // One volume whatever the size: 7 members need no 7 export directories.
            assert_eq!(s.shared_pv_names().len(), 1);
            assert!(
                s.cluster_export_dir().to_string_lossy().contains(NS),
                "{}",
                s.cluster_export_dir().display()
            );
        }
    }

    #[test]
    fn bench_specs_with_a_storage_class_give_each_of_the_7_members_a_claim_from_it() {
        let mut user = user_spec(Some("local-path")).into_inner();
        // A user's shared-mode spec cannot name a class; templates with it is the one choice.
        user.storage.mode = StorageMode::Templates;
        let user = user.validated().unwrap();
        let s = bench_spec(
            &user,
            NS,
            "pgset7-ordered-1",
            7,
            PodManagementPolicy::OrderedReady,
        )
        .unwrap();
        assert_eq!(s.storage.mode, StorageMode::Templates);
        assert_eq!(s.storage.storage_class.as_deref(), Some("local-path"));
        assert_eq!(s.replicas, 7);
    }

    #[test]
    fn bench_spec_keeps_the_users_images() {
        let mut user = ClusterSpec::default();
        user.postgres.image = "registry.example/postgres:17".into();
        user.agent.image = "registry.example/pgset-agent:1".into();
        let user = user.validated().unwrap();
        let s = bench_spec(
            &user,
            NS,
            "pgset3-ordered-1",
            3,
            PodManagementPolicy::OrderedReady,
        )
        .unwrap();
        assert_eq!(s.postgres.image, "registry.example/postgres:17");
        assert_eq!(s.agent.image, "registry.example/pgset-agent:1");
    }

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&secs(&[9])), Some(Duration::from_secs(9)));
        assert_eq!(median(&secs(&[30, 10, 20])), Some(Duration::from_secs(20)));
        assert_eq!(
            median(&secs(&[40, 10, 20, 30])),
            Some(Duration::from_secs(25))
        );
    }

    #[test]
    fn ratio_line_puts_the_median_beside_the_floor_and_says_over_target_above_it() {
        let pgset7 = Run::Pgset {
            members: 7,
            policy: PodManagementPolicy::OrderedReady,
        };
        let bare7 = Run::Bare { members: 7 };
        let ok = ratio_line(
            pgset7,
            &secs(&[105, 200, 100]),
            bare7,
            &secs(&[100, 96, 110]),
            ROLLOUT_RATIO_TARGET,
        );
        assert!(
            ok.starts_with("pgset deploy, 7 Ready + streaming, OrderedReady"),
            "{ok}"
        );
        assert!(
            ok.contains("105.0s  1.05x bare 7 (target <= 1.10x) ok (median of 3)"),
            "{ok}"
        );
        let over = ratio_line(
            pgset7,
            &secs(&[120]),
            bare7,
            &secs(&[100]),
            ROLLOUT_RATIO_TARGET,
        );
        assert!(
            over.contains("1.20x bare 7 (target <= 1.10x) OVER TARGET"),
            "{over}"
        );
        assert!(!over.contains("median"), "{over}");
        let parallel = ratio_line(
            Run::Pgset {
                members: 7,
                policy: PodManagementPolicy::Parallel,
            },
            &secs(&[61]),
            bare7,
            &secs(&[100]),
            PARALLEL_RATIO_TARGET,
        );
        assert!(
            parallel.contains("0.61x bare 7 (target <= 0.60x) OVER TARGET"),
            "{parallel}"
        );
        let missing = ratio_line(pgset7, &[], bare7, &secs(&[100]), ROLLOUT_RATIO_TARGET);
        assert!(missing.contains("not measured"), "{missing}");
        let no_floor = ratio_line(pgset7, &secs(&[5]), bare7, &[], ROLLOUT_RATIO_TARGET);
        assert!(no_floor.contains("no bare 7 floor"), "{no_floor}");
    }

    #[test]
    fn floor_line_names_the_bare_statefulset_and_its_median() {
        let l = floor_line(Run::Bare { members: 3 }, &secs(&[12, 14]));
        assert!(
            l.starts_with("bare StatefulSet (initdb + postgres), 3 Ready, OrderedReady"),
            "{l}"
        );
        assert!(l.ends_with("13.0s (median of 2)"), "{l}");
    }

    #[test]
    fn no_change_up_target_is_five_seconds_plus_the_clusters_answer_time() {
        let answer = Duration::from_millis(40);
        let ok = no_change_up_line(Duration::from_millis(5_030), answer);
        assert!(
            ok.contains("5.0s  (target <= 5s + 0.04s cluster answer = 5.04s) ok"),
            "{ok}"
        );
        let over = no_change_up_line(Duration::from_millis(5_050), answer);
        assert!(over.ends_with("OVER TARGET"), "{over}");
    }

    #[test]
    fn timeline_block_names_the_run_and_round_and_indents_each_member() {
        let b = timeline_block(
            Run::Pgset {
                members: 3,
                policy: PodManagementPolicy::OrderedReady,
            },
            2,
            Duration::from_millis(31_260),
            &[
                "pgset-0: +0.0s scheduled".into(),
                "pgset-1: +9.0s scheduled".into(),
            ],
        );
        assert_eq!(
            b,
            vec![
                "pgset deploy, 3 Ready + streaming, OrderedReady (round 2): 31.3s; seconds since the apply, each step's length in brackets:".to_string(),
                "  pgset-0: +0.0s scheduled".into(),
                "  pgset-1: +9.0s scheduled".into(),
            ]
        );
    }
}
