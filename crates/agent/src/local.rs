//! Local mode: a primary and replicas as agent processes on 127.0.0.1.
