//! Named pause points inside the log, for tests that make a race happen on purpose (only with
//! the `failpoints` feature). A thread that reaches a paused point waits there until the test
//! resumes it.
//!
//! ```
//! tern_wal::failpoints::pause("complete_sync::before_checkpoint");
//! // ... a thread that reaches the point now waits ...
//! tern_wal::failpoints::resume("complete_sync::before_checkpoint");
//! ```

use std::collections::BTreeSet;

use parking_lot::{Condvar, Mutex};

static PAUSED: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
static RESUMED: Condvar = Condvar::new();
/// Threads waiting at each point now.
static WAITING: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// From now on, threads that reach the point `name` wait there.
pub fn pause(name: &'static str) {
    PAUSED.lock().insert(name);
}

/// Lets every thread waiting at `name` go on, and later ones pass.
pub fn resume(name: &'static str) {
    PAUSED.lock().remove(name);
    RESUMED.notify_all();
}

/// How many threads wait at the point `name` now.
pub fn waiting(name: &'static str) -> usize {
    WAITING.lock().iter().filter(|n| **n == name).count()
}

/// Called at the point `name`: waits while it is paused.
pub(crate) fn hit(name: &'static str) {
    let mut paused = PAUSED.lock();
    if !paused.contains(name) {
        return;
    }
    WAITING.lock().push(name);
    while paused.contains(name) {
        RESUMED.wait(&mut paused);
    }
    let mut waiting = WAITING.lock();
    if let Some(i) = waiting.iter().position(|n| *n == name) {
        waiting.swap_remove(i);
    }
}
