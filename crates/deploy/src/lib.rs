//! Kubernetes objects of a pgset cluster, built purely from a `ClusterSpec`, and the thin edge
//! that applies them, waits for the rollout, scales and tears down.
