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

/// From now on, threads that reach the point `name` wait there.
pub fn pause(name: &'static str) {
    PAUSED.lock().insert(name);
}

/// Lets every thread waiting at `name` go on, and later ones pass.
pub fn resume(name: &'static str) {
    PAUSED.lock().remove(name);
    RESUMED.notify_all();
}

/// Called at the point `name`: waits while it is paused.
pub(crate) fn hit(name: &'static str) {
    let mut paused = PAUSED.lock();
    while paused.contains(name) {
        RESUMED.wait(&mut paused);
    }
}
