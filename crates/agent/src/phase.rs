//! The member's step on its own pod: one background task writes the `pgset.io/phase`
//! annotation whenever the step changes, and while the step is a base backup also the copy's
//! latest reading (`pgset.io/base-backup`), at most once per [`READING_INTERVAL`]; a failed
//! write is retried with backoff and logged once per distinct error.

use std::time::Duration;

use pgset_spec::contract::{BaseBackupReading, MemberPhase};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::kube_api::PodApi;

/// The first pause after a failed write; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The shortest time between two writes of a base backup's reading: a person watching the
/// copy sees it move, and the API server sees one small patch per member every few seconds.
pub const READING_INTERVAL: Duration = Duration::from_secs(5);

/// What the pod carries (as far as this writer knows).
type Written = (MemberPhase, Option<BaseBackupReading>);

/// The running writer: what it last wrote.
#[derive(Debug)]
pub struct Publisher {
    written: watch::Receiver<Option<Written>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts writing `steps` onto the pod `pod`, and `copied` while the step is
/// [`MemberPhase::BaseBackup`] (the reading is removed from the pod in every other step).
pub fn publish(
    api: PodApi,
    pod: String,
    mut steps: watch::Receiver<MemberPhase>,
    mut copied: watch::Receiver<Option<BaseBackupReading>>,
) -> Publisher {
    let (tell, written) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = String::new();
        // When a reading was last written: the next one waits out the interval.
        let mut reading_written: Option<Instant> = None;
        loop {
            let step = *steps.borrow_and_update();
            let reading = (*copied.borrow_and_update()).filter(|_| step == MemberPhase::BaseBackup);
            let on_pod = *tell.borrow();
            let step_due = on_pod.map(|(s, _)| s) != Some(step);
            let reading_new = reading.is_some() && on_pod.and_then(|(_, r)| r) != reading;
            let reading_turn = reading_written.map(|t| t + READING_INTERVAL);
            let reading_held = reading_new && reading_turn.is_some_and(|at| at > Instant::now());
            if step_due || (reading_new && !reading_held) {
                match api.annotate_phase(&pod, step, reading.as_ref()).await {
                    Ok(()) => {
                        tell.send_replace(Some((step, reading)));
                        if reading.is_some() {
                            reading_written = Some(Instant::now());
                        }
                        backoff = FIRST_BACKOFF;
                        last_error.clear();
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if text != last_error {
                            crate::warn!(
                                "writing the pod's phase annotation (retried; only progress reports miss it): {text}"
                            );
                            last_error = text;
                        }
                        // A newer step ends the pause early: it is the one to write.
                        if let Ok(Err(_)) = tokio::time::timeout(backoff, steps.changed()).await {
                            return;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            }
            let ended = match reading_turn.filter(|_| reading_held) {
                // A reading waits for its turn; a new step does not.
                Some(turn) => tokio::select! {
                    r = steps.changed() => r.is_err(),
                    _ = tokio::time::sleep_until(turn) => false,
                },
                None => tokio::select! {
                    r = steps.changed() => r.is_err(),
                    r = copied.changed() => r.is_err(),
                },
            };
            if ended {
                return;
            }
        }
    });
    Publisher { written, task }
}

impl Publisher {
    /// Waits (at most `within`) until `step` is written: the last word before the agent exits.
    pub async fn flush(&mut self, step: MemberPhase, within: Duration) -> bool {
        tokio::time::timeout(
            within,
            self.written.wait_for(|w| w.is_some_and(|(s, _)| s == step)),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
