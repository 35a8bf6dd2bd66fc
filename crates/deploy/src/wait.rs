//! Waiting on the API server's watch (kube's runtime) instead of polling: a set of objects
//! followed through [`watcher`] events, judged by a pure predicate after every change, the
//! whole wait bounded by [`tokio::time::timeout`] at the caller.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::pin::pin;

use futures::StreamExt;
use kube::runtime::wait::{self, Condition};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// The objects a watch selects, by name, as the watch's events build them up: complete once
/// the first listing is done, then kept current by each change.
#[derive(Debug, Clone)]
pub struct Listing<K> {
    /// The last complete set (empty until the first listing is done).
    pub objects: BTreeMap<String, K>,
    /// Objects of a (re)listing in progress; they replace `objects` when it is done.
    pending: BTreeMap<String, K>,
    listed: bool,
}

impl<K> Default for Listing<K> {
    fn default() -> Self {
        Listing {
            objects: BTreeMap::new(),
            pending: BTreeMap::new(),
            listed: false,
        }
    }
}

impl<K: Resource> Listing<K> {
    /// Folds one watch event in; true when `objects` is complete and may have changed, i.e.
    /// when it is worth judging again.
    pub fn apply(&mut self, event: Event<K>) -> bool {
        let name = |o: &K| o.meta().name.clone().unwrap_or_default();
        match event {
            Event::Init => {
                self.pending.clear();
                false
            }
            Event::InitApply(o) => {
                self.pending.insert(name(&o), o);
                false
            }
            Event::InitDone => {
                self.objects = std::mem::take(&mut self.pending);
                self.listed = true;
                true
            }
            Event::Apply(o) => {
                self.objects.insert(name(&o), o);
                self.listed
            }
            Event::Delete(o) => {
                self.objects.remove(&name(&o));
                self.listed
            }
        }
    }

    /// True once the first listing is done.
    pub fn listed(&self) -> bool {
        self.listed
    }
}

/// True for a watch error the watcher recovers from by itself: the API server no longer has
/// the version the watch resumed from (410 Gone, e.g. after a long wait), so the watcher lists
/// again. Any other error ends the wait.
pub fn recoverable(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// For `StreamExt::filter` on a watch: drops the errors the watcher recovers from by itself
/// ([`recoverable`]); others stay and end the wait.
pub fn unrecoverable<T>(item: &Result<T, watcher::Error>) -> std::future::Ready<bool> {
    std::future::ready(!matches!(item, Err(e) if recoverable(e)))
}

/// Watches what `config` selects through `api` until `done` holds for the complete set,
/// judged after the first listing and after every change; `listing` keeps the last set seen,
/// so a caller whose [`tokio::time::timeout`] ran out can say what was left. Never ends on its
/// own: bound it with a timeout.
pub async fn until_listing<K, F>(
    api: Api<K>,
    config: watcher::Config,
    listing: &mut Listing<K>,
    mut done: F,
) -> Result<(), watcher::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: FnMut(&BTreeMap<String, K>) -> bool,
{
    let mut events = pin!(watcher(api, config));
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) if recoverable(&e) => continue,
            Err(e) => return Err(e),
        };
        if listing.apply(event) && done(&listing.objects) {
            return Ok(());
        }
    }
    // A watcher restarts its watch when the server closes it: its stream does not end.
    std::future::pending().await
}

/// Watches the one object `name` through `api` until `condition` holds of it (or of its
/// absence: `None`), judged after the first listing and after every change; returns the object
/// as it was then. What kube's `await_condition` does, with its error, except that a watch the
/// API server expired (410 Gone) lists again instead of ending the wait. Never ends on its own:
/// bound it with a timeout.
pub async fn until_object<K>(
    api: Api<K>,
    name: &str,
    condition: impl Condition<K>,
) -> Result<Option<K>, wait::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut listing = Listing::default();
    let mut found = None;
    until_listing(api, config, &mut listing, |objects| {
        let object = objects.get(name);
        let holds = condition.matches_object(object);
        if holds {
            found = object.cloned();
        }
        holds
    })
    .await
    .map_err(wait::Error::ProbeFailed)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn names(l: &Listing<Pod>) -> Vec<&str> {
        l.objects.keys().map(String::as_str).collect()
    }

    #[test]
    fn a_listing_is_judged_only_once_complete_and_a_relisting_replaces_it() {
        let mut l = Listing::default();
        assert!(!l.apply(Event::Init));
        assert!(!l.apply(Event::InitApply(pod("a"))));
        assert!(!l.apply(Event::InitApply(pod("b"))));
        assert!(
            names(&l).is_empty(),
            "nothing judged before the listing is done"
        );
        assert!(l.apply(Event::InitDone));
        assert_eq!(names(&l), ["a", "b"]);
        assert!(l.apply(Event::Delete(pod("a"))));
        assert!(l.apply(Event::Apply(pod("c"))));
        assert_eq!(names(&l), ["b", "c"]);
        // A relisting (the watch expired): the old set stands until the new one is complete.
        assert!(!l.apply(Event::Init));
        assert!(!l.apply(Event::InitApply(pod("d"))));
        assert_eq!(names(&l), ["b", "c"]);
        assert!(l.apply(Event::InitDone));
        assert_eq!(names(&l), ["d"]);
    }

    #[test]
    fn changes_before_the_first_listing_are_not_worth_judging() {
        let mut l = Listing::default();
        assert!(!l.apply(Event::Apply(pod("a"))));
        assert!(!l.listed());
    }
}
