//! A cache of freed small blocks in front of the component's allocator.
//!
//! A handler call allocates and frees the same few small sizes over and over
//! (the message's subject, headers and payload as the batch is decoded, the
//! JSON tree of an edit, the output), so most frees are followed by an
//! allocation of the same size class. Keeping freed blocks of up to
//! [`LARGEST`] bytes on one free list per power-of-two class makes both a
//! pointer swap instead of a trip through the general allocator's bins.
//! Measured with `cargo bench --bench guest`, see docs/performance.md.
//!
//! The cost is memory: a cached block is never handed back, so each class
//! holds at most what it held at its peak. Components are single-threaded
//! (no `atomics` target feature), which the `Sync` impl relies on.

// A global allocator is unsafe by nature: it hands out raw memory.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// Blocks up to this size are cached; larger ones go straight through.
pub const LARGEST: usize = 1024;
/// The smallest class: a block must hold the free list's next pointer.
const SMALLEST_SHIFT: u32 = 4;
/// Classes 16, 32, … 1024 bytes.
const CLASSES: usize = (LARGEST.trailing_zeros() - SMALLEST_SHIFT + 1) as usize;
/// Every cached block is aligned to this; larger alignments go through.
const ALIGN: usize = 16;

/// `inner` with a free list per size class in front of it.
pub struct Cached<A> {
    inner: A,
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

// Sound only without threads: the free lists are not synchronised. A
// component on wasm32 without the `atomics` feature has one thread, and the
// native unit tests use each instance from one thread only.
unsafe impl<A: Sync> Sync for Cached<A> {}

impl<A> Cached<A> {
    /// The cache in front of `inner`, empty.
    pub const fn new(inner: A) -> Self {
        Cached {
            inner,
            free: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }
}

/// The class of a layout the cache serves, or `None` if it goes through.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > LARGEST || layout.align() > ALIGN {
        return None;
    }
    let size = layout.size().max(1 << SMALLEST_SHIFT).next_power_of_two();
    Some((size.trailing_zeros() - SMALLEST_SHIFT) as usize)
}

/// The layout the inner allocator sees for a block of `class`.
fn class_layout(class: usize) -> Layout {
    // Sizes 16..=1024 aligned to 16 are always valid layouts.
    unsafe { Layout::from_size_align_unchecked(1 << (class as u32 + SMALLEST_SHIFT), ALIGN) }
}

unsafe impl<A: GlobalAlloc> GlobalAlloc for Cached<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            return unsafe { self.inner.alloc(layout) };
        };
        // Single-threaded (see the `Sync` impl), and no other reference to
        // the lists lives across this call.
        let free = unsafe { &mut *self.free.get() };
        let head = free[class];
        if head.is_null() {
            return unsafe { self.inner.alloc(class_layout(class)) };
        }
        // A cached block's first word is the next free block.
        free[class] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            return unsafe { self.inner.dealloc(block, layout) };
        };
        let free = unsafe { &mut *self.free.get() };
        unsafe { block.cast::<*mut u8>().write(free[class]) };
        free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Same alignment, new size: valid because the caller guarantees it.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            // Neither end is cached: the inner allocator may grow in place.
            (None, None) => unsafe { self.inner.realloc(block, layout, new_size) },
            // Still fits its block.
            (Some(old), Some(new)) if old == new => block,
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    let keep = layout.size().min(new_size);
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, keep);
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::System;
    use std::cell::Cell;

    use super::*;

    /// The system allocator, counting the blocks it has out.
    struct Counting {
        live: Cell<isize>,
    }

    unsafe impl Sync for Counting {}

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.live.set(self.live.get() + 1);
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
            self.live.set(self.live.get() - 1);
            unsafe { System.dealloc(block, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn sizes_map_to_power_of_two_classes_and_large_or_aligned_go_through() {
        assert_eq!(class(layout(1, 1)), Some(0));
        assert_eq!(class(layout(16, 8)), Some(0));
        assert_eq!(class(layout(17, 1)), Some(1));
        assert_eq!(class(layout(LARGEST, 16)), Some(CLASSES - 1));
        assert_eq!(class(layout(LARGEST + 1, 1)), None);
        assert_eq!(class(layout(64, 32)), None);
    }

    #[test]
    fn a_freed_block_is_reused_for_its_class_without_the_inner_allocator() {
        let a = Cached::new(Counting { live: Cell::new(0) });
        unsafe {
            let x = a.alloc(layout(100, 8));
            assert_eq!(a.inner.live.get(), 1);
            a.dealloc(x, layout(100, 8));
            // Cached, not returned.
            assert_eq!(a.inner.live.get(), 1);
            // 120 bytes is the same 128-byte class: the same block.
            let y = a.alloc(layout(120, 4));
            assert_eq!(y, x);
            // A different class needs a block of its own.
            let z = a.alloc(layout(20, 4));
            assert_ne!(z, x);
            assert_eq!(a.inner.live.get(), 2);
            // Large blocks go straight through both ways.
            let big = a.alloc(layout(5000, 8));
            assert_eq!(a.inner.live.get(), 3);
            a.dealloc(big, layout(5000, 8));
            assert_eq!(a.inner.live.get(), 2);
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_into_large_blocks() {
        let a = Cached::new(Counting { live: Cell::new(0) });
        unsafe {
            let mut size = 3;
            let mut block = a.alloc(layout(size, 1));
            for (i, b) in b"abc".iter().enumerate() {
                block.add(i).write(*b);
            }
            for new_size in [15, 40, 1000, 3000, 9000, 500, 2] {
                block = a.realloc(block, layout(size, 1), new_size);
                assert!(!block.is_null());
                assert_eq!(std::slice::from_raw_parts(block, 2), b"ab", "{new_size}");
                size = new_size;
            }
            a.dealloc(block, layout(size, 1));
        }
    }
}
