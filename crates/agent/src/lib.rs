//! The in-pod agent: role by ordinal, per-pod PGDATA, primary init or replica base backup,
//! self-labelling through the API, supervising postgres.
