//! Verification of a live pgset cluster: the seeds' tests and more, each a named check with a
//! verdict, a duration and a message.
