//! The member's step on its own pod: one background task writes the `pgset.io/phase`
//! annotation whenever the step changes (never on a timer); a failed write is retried with
//! backoff and logged once per distinct error.

use std::time::Duration;

use pgset_spec::contract::MemberPhase;
use tokio::sync::watch;

use crate::kube_api::PodApi;

/// The first pause after a failed write; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The running writer: what it last wrote.
#[derive(Debug)]
pub struct Publisher {
    written: watch::Receiver<Option<MemberPhase>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts writing `steps` onto the pod `pod`.
pub fn publish(api: PodApi, pod: String, mut steps: watch::Receiver<MemberPhase>) -> Publisher {
    let (tell, written) = watch::channel(None);
    let task = tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = String::new();
        loop {
            let step = *steps.borrow_and_update();
            if *tell.borrow() != Some(step) {
                match api.annotate_phase(&pod, step).await {
                    Ok(()) => {
                        tell.send_replace(Some(step));
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
                        continue;
                    }
                }
            }
            if steps.changed().await.is_err() {
                return;
            }
        }
    });
    Publisher { written, task }
}

impl Publisher {
    /// Waits (at most `within`) until `step` is written: the last word before the agent exits.
    pub async fn flush(&mut self, step: MemberPhase, within: Duration) -> bool {
        tokio::time::timeout(within, self.written.wait_for(|w| *w == Some(step)))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
