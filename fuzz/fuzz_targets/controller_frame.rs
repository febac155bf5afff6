//! Controller frames from arbitrary bytes (`tern_controller::rpc`, PROTOCOL.md "Controller"):
//! `read_frame` into a `Request` and into a `Response` never panics and never waits on bytes
//! already in memory. A header whose length is over `FRAME_BYTES_MAX` is refused with nothing
//! read past the header and no allocation near that length (every allocation is watched), and
//! no read allocates more than `FRAME_BYTES_MAX` at once. What reads consumed exactly its
//! frame, speaks protocol version 1, and is written by `write_frame` to a frame no longer than
//! the one read, which reads back and is written again to exactly the same bytes.
//!
//! Input: `control u8 | frame`. Control bit 0 makes `frame` whole first (magic, length of the
//! rest and checksum rewritten to match: random bytes almost never carry a checksum), and bit 1
//! also writes protocol version 1 at the start of its body. Bit 2 sets the length field to a
//! value over `FRAME_BYTES_MAX` taken from the field itself.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tern_controller::rpc::{
    read_frame, write_frame, Request, Response, CONTROLLER_PROTOCOL_VERSION, FRAME_BYTES_MAX, FRAME_MAGIC,
};

const HEADER_BYTES: usize = 12;

/// The global allocator, noting the largest single allocation made while `WATCHING`.
struct Watched;

static WATCHING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(bytes: usize) {
    if WATCHING.load(Ordering::Relaxed) {
        LARGEST.fetch_max(bytes, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

/// `f()` and the largest single allocation it made.
fn watched<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    WATCHING.store(true, Ordering::Relaxed);
    let out = f();
    WATCHING.store(false, Ordering::Relaxed);
    (out, LARGEST.load(Ordering::Relaxed))
}

/// The output of a future that reads or writes memory only: it must be ready when first polled.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a frame in memory left the reader waiting"),
    }
}

fn written<T: Serialize>(message: &T) -> Vec<u8> {
    let mut frame = Vec::new();
    ready(write_frame(&mut frame, message)).expect("a message read from a frame is written to one");
    frame
}

fn check<T: Serialize + DeserializeOwned>(frame: &[u8]) {
    let mut cursor = Cursor::new(frame);
    let (read, largest) = watched(|| ready(read_frame::<_, T>(&mut cursor)));
    let consumed = cursor.position() as usize;
    assert!(largest <= FRAME_BYTES_MAX as usize, "an allocation of {largest} bytes");
    let len = frame.get(4..8).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    if frame.len() >= HEADER_BYTES && frame[..4] == FRAME_MAGIC && len.is_some_and(|len| len > FRAME_BYTES_MAX) {
        let err = read.as_ref().err().expect("a length over the limit is refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert_eq!(consumed, HEADER_BYTES, "read past the header of a frame over the limit");
        assert!(largest < 4096, "an allocation of {largest} bytes for a frame over the limit");
    }
    let Ok(message) = read else { return };
    let len = len.expect("a frame that reads has a header") as usize;
    assert_eq!(consumed, HEADER_BYTES + len, "read more or less than one frame");
    assert_eq!(frame[HEADER_BYTES..HEADER_BYTES + 2], CONTROLLER_PROTOCOL_VERSION.to_le_bytes());
    // The frame read may carry bytes after the message or map keys out of order, which the
    // writer drops or sorts: never longer, and canonical from then on.
    let first = written(&message);
    assert!(first.len() <= consumed, "{} bytes written for a frame of {consumed}", first.len());
    let again: T = ready(read_frame(&mut first.as_slice())).expect("a frame written reads back");
    assert_eq!(written(&again), first, "a frame written, read and written again changed");
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let mut frame = rest.to_vec();
    if control & 1 != 0 && frame.len() >= HEADER_BYTES {
        if control & 2 != 0 && frame.len() >= HEADER_BYTES + 2 {
            frame[HEADER_BYTES..HEADER_BYTES + 2].copy_from_slice(&CONTROLLER_PROTOCOL_VERSION.to_le_bytes());
        }
        let body_len = (frame.len() - HEADER_BYTES) as u32;
        let crc = crc32fast::hash(&frame[HEADER_BYTES..]);
        frame[..4].copy_from_slice(&FRAME_MAGIC);
        frame[4..8].copy_from_slice(&body_len.to_le_bytes());
        frame[8..12].copy_from_slice(&crc.to_le_bytes());
    }
    if control & 4 != 0 && frame.len() >= 8 {
        let field = u32::from_le_bytes(frame[4..8].try_into().unwrap());
        let over = FRAME_BYTES_MAX + 1 + field % (u32::MAX - FRAME_BYTES_MAX);
        frame[..4].copy_from_slice(&FRAME_MAGIC);
        frame[4..8].copy_from_slice(&over.to_le_bytes());
    }
    check::<Request>(&frame);
    check::<Response>(&frame);
});
