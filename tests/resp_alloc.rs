//! The RESP parser never allocates by what a request *declares*, only by what has arrived.
//!
//! This file is its own test binary so that its counting allocator touches nothing else: it
//! records, per thread, the largest single allocation and the total allocated while `parse` runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hotpair::resp::{parse, Limits};
use proptest::prelude::*;

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    let _ = TOTAL.try_with(|total| total.set(total.get().saturating_add(size)));
}

// SAFETY: every call is passed straight to the system allocator; only sizes are recorded.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// (largest single allocation, total allocated) while parsing `bytes`.
fn allocations_of_parse(bytes: &[u8], limits: &Limits) -> (usize, usize) {
    LARGEST.with(|largest| largest.set(0));
    TOTAL.with(|total| total.set(0));
    let parsed = parse(bytes, limits);
    let counted = (LARGEST.with(Cell::get), TOTAL.with(Cell::get));
    drop(parsed);
    counted
}

/// What parsing `length` bytes may allocate: each byte can become at most a few frames' worth.
fn budget(length: usize) -> usize {
    1024 + 64 * length * hotpair::resp::frame::MAX_NESTING_DEPTH
}

/// Headers that declare large things, followed by little.
fn header() -> impl Strategy<Value = Vec<u8>> {
    let declared = prop_oneof![Just(i64::MAX), Just(1 << 40), Just(1 << 20), Just(4096), 0..100i64];
    (prop::sample::select(vec![b'$', b'*']), declared)
        .prop_map(|(kind, n)| format!("{}{n}\r\n", kind as char).into_bytes())
}

proptest! {
    #[test]
    fn declared_sizes_do_not_drive_allocation(
        headers in proptest::collection::vec(header(), 1..6),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = headers.concat();
        bytes.extend(tail);
        let limits = Limits { max_value_bytes: 1 << 30, max_args: 1 << 30, max_request_bytes: 1 << 40, ..Limits::default() };
        let (largest, total) = allocations_of_parse(&bytes, &limits);
        prop_assert!(largest <= budget(bytes.len()), "{} bytes allocated one block of {largest}", bytes.len());
        prop_assert!(total <= budget(bytes.len()), "{} bytes allocated {total} in all", bytes.len());
    }

    #[test]
    fn random_bytes_allocate_in_proportion_to_their_length(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (largest, total) = allocations_of_parse(&bytes, &Limits::default());
        prop_assert!(largest <= budget(bytes.len()) && total <= budget(bytes.len()), "{largest} / {total}");
    }
}

#[test]
fn a_huge_declared_bulk_allocates_nothing_for_its_data() {
    let limits = Limits { max_value_bytes: usize::MAX, max_request_bytes: usize::MAX, ..Limits::default() };
    let (largest, _) = allocations_of_parse(b"*1\r\n$9223372036854775807\r\nabc", &limits);
    assert!(largest < 1024, "allocated {largest} bytes at once");
}
