//! The peer comparison lives in `benches/peers.rs`; see `benches/README.md`. This crate is a
//! workspace member outside `default-members`, so raft-engine and okaywal are built only when
//! it is named (`cargo bench -p tern-bench-peers`).
