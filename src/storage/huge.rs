//! An allocator that puts big in-memory tables in transparent huge pages.
//!
//! A shard's account index and the ledger's map of recent transfer ids are tens of megabytes of
//! hash buckets probed at random, once or more per operation. With 4 KiB pages nearly every probe
//! misses the TLB as well as the cache; with 2 MiB pages the page walk mostly stays cached.
//! Allocations of 2 MiB and more are mapped anonymously, their length rounded up to 2 MiB (Linux
//! aligns such mappings to 2 MiB), and the whole 2 MiB pages the allocation fills are advised
//! `MADV_HUGEPAGE`; its tail keeps small pages, so the rounding never becomes resident (a table
//! of 3.1 MiB costs 3.1 MiB, not 4). Smaller allocations go to the global allocator.
//! Where huge pages are off, the advice does nothing and the mapping is an ordinary one.
//!
//! Recovery defers the advice ([`defer`]): a huge-page fault may compact memory synchronously
//! (`defrag = madvise`), and right after a crash the page cache is full and fragmented: the tables
//! built while reopening 1M accounts cost 150–600 ms more in huge pages. Mappings made meanwhile
//! are advised when the last deferral ends, and the kernel's background `khugepaged` collapses
//! them later; tables allocated afterwards (growth included) get huge pages at once.
//! Measured under `tally load` (1M accounts, batches of 1,000): see the README.

use std::alloc::Layout;
use std::ptr::NonNull;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use allocator_api2::alloc::{AllocError, Allocator, Global};

/// The size from which an allocation gets a mapping of its own, and that mapping's granule.
const HUGE: usize = 2 << 20;

/// See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct HugeAlloc;

/// Deferrals in force, and the mappings (address, length) made while one was.
static DEFERRALS: AtomicUsize = AtomicUsize::new(0);
static DEFERRED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

fn deferred() -> std::sync::MutexGuard<'static, Vec<(usize, usize)>> {
    match DEFERRED.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Holds back the huge-page advice for new mappings until the returned guard (and every other
/// one) is dropped; see the module docs.
pub fn defer() -> Deferral {
    DEFERRALS.fetch_add(1, Ordering::SeqCst);
    Deferral(())
}

/// See [`defer`].
#[derive(Debug)]
pub struct Deferral(());

impl Drop for Deferral {
    fn drop(&mut self) {
        let mut mappings = deferred();
        if DEFERRALS.fetch_sub(1, Ordering::SeqCst) == 1 {
            for (address, len) in mappings.drain(..) {
                advise(address as *mut std::ffi::c_void, len);
            }
        }
    }
}

/// Whether `layout` gets a mapping of its own (its length rounded up to whole huge pages).
fn mapped_len(layout: Layout) -> Option<usize> {
    if cfg!(unix) && layout.size() >= HUGE && layout.align() <= 4096 {
        layout.size().checked_next_multiple_of(HUGE)
    } else {
        None
    }
}

// SAFETY: a block comes from `mmap` (a fresh private anonymous mapping of `mapped_len` bytes,
// page-aligned, so aligned for any `align <= 4096`, valid until `munmap`) or from `Global`; which
// one is decided by the layout alone, so `deallocate` (which gets the same layout) returns each
// block to where it came from. Blocks are never shared between allocator values, and moving or
// cloning `HugeAlloc` (a unit struct) keeps every block valid.
unsafe impl Allocator for HugeAlloc {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let Some(len) = mapped_len(layout) else {
            return Global.allocate(layout);
        };
        // Huge pages for the whole 2 MiB pages the block fills; its tail keeps small pages, so
        // the part of the mapping past the block (rounding) is never made resident.
        let huge = layout.size() / HUGE * HUGE;
        map(len, huge)
            .map(|ptr| NonNull::slice_from_raw_parts(ptr, len))
            .ok_or(AllocError)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        match mapped_len(layout) {
            // SAFETY: the caller passes a block this allocator returned for `layout`, so it is
            // a mapping of exactly `len` bytes made by `map`, not used after this call.
            Some(len) => unsafe { unmap(ptr, len) },
            // SAFETY: as above, a block `Global` returned for `layout`.
            None => unsafe { Global.deallocate(ptr, layout) },
        }
    }
}

#[cfg(unix)]
fn map(len: usize, huge: usize) -> Option<NonNull<u8>> {
    // SAFETY: a new private anonymous mapping at an address of the kernel's choosing: it aliases
    // no existing memory. Failure is checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    if DEFERRALS.load(Ordering::SeqCst) > 0 {
        let mut mappings = deferred();
        // Checked again under the lock: the last deferral drains the list under it.
        if DEFERRALS.load(Ordering::SeqCst) > 0 {
            mappings.push((ptr as usize, huge));
            return NonNull::new(ptr.cast());
        }
    }
    advise(ptr, huge);
    NonNull::new(ptr.cast())
}

/// Advises huge pages for a mapping made by [`map`] and not unmapped since; if the advice fails
/// the mapping simply keeps small pages.
#[cfg(unix)]
fn advise(ptr: *mut std::ffi::c_void, len: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: madvise changes no memory contents and takes no ownership; the range is a live
    // mapping of ours (unmapping removes it from the deferred list first, under its lock).
    unsafe {
        libc::madvise(ptr, len, libc::MADV_HUGEPAGE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

#[cfg(not(unix))]
fn map(_: usize, _: usize) -> Option<NonNull<u8>> {
    None
}

#[cfg(not(unix))]
fn advise(_: *mut std::ffi::c_void, _: usize) {}

/// # Safety
/// `ptr` and `len` are a mapping made by [`map`], not used afterwards.
#[cfg(unix)]
unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    let mut mappings = deferred();
    mappings.retain(|&(address, _)| address != ptr.as_ptr() as usize);
    // SAFETY: the caller's promise. A failed munmap (impossible for a whole mapping we made)
    // would only leak it. The deferred list's lock is held, so no deferred advice can reach the
    // range after it is unmapped.
    unsafe {
        libc::munmap(ptr.as_ptr().cast(), len);
    }
}

#[cfg(not(unix))]
unsafe fn unmap(_: NonNull<u8>, _: usize) {}

/// [`HugeAlloc`] that remembers the block it handed out last, and so where the one hash table
/// it serves keeps its buckets: [`Tracked::prefetch`] can then ask the CPU for a key's home
/// bucket before the lookup needs it. A table holds one block at a time (growing allocates the
/// new one, moves, and frees the old), so the last block is the table's.
///
/// Where the home bucket is comes from hashbrown's layout (buckets of `T` below the control
/// bytes, a probe starting at `hash & (buckets - 1)`), which is not its public API. A guess
/// wrong after an upgrade costs speed, never correctness: a prefetch is a hint that never
/// faults and reads nothing into the program.
#[derive(Debug, Default)]
pub struct Tracked {
    base: AtomicUsize,
    size: AtomicUsize,
}

impl Clone for Tracked {
    /// A clone serves another table, which has no block yet.
    fn clone(&self) -> Self {
        Tracked::default()
    }
}

/// Control bytes past the last bucket: hashbrown's group width with SSE2.
const GROUP_WIDTH: usize = 16;

const CACHE_LINE: usize = 64;

impl Tracked {
    /// Hints the CPU to fetch the control byte and the bucket (of `bucket_bytes`) where a key
    /// of hash `hash` is looked for first; both cache lines of a bucket that spans two.
    #[inline]
    pub fn prefetch(&self, hash: u64, bucket_bytes: usize) {
        if let Some((control, bucket)) = self.home(hash, bucket_bytes) {
            super::prefetch(control);
            super::prefetch(bucket);
            let last = bucket.wrapping_add(bucket_bytes - 1);
            if last / CACHE_LINE != bucket / CACHE_LINE {
                super::prefetch(last);
            }
        }
    }

    /// The addresses of the control byte and the bucket where a key of hash `hash` is looked
    /// for first, if the table has a block.
    #[inline]
    fn home(&self, hash: u64, bucket_bytes: usize) -> Option<(usize, usize)> {
        let base = self.base.load(Ordering::Relaxed);
        let size = self.size.load(Ordering::Relaxed);
        // size = buckets * bucket_bytes + buckets + GROUP_WIDTH.
        let buckets = size.saturating_sub(GROUP_WIDTH) / (bucket_bytes + 1);
        if base == 0 || !buckets.is_power_of_two() {
            return None;
        }
        let position = hash as usize & (buckets - 1);
        let control = base.wrapping_add(buckets * bucket_bytes);
        let bucket = control.wrapping_sub((position + 1) * bucket_bytes);
        Some((control.wrapping_add(position), bucket))
    }
}

// SAFETY: every block comes from and goes back to `HugeAlloc`, with the same layouts; the
// bookkeeping only records addresses.
unsafe impl Allocator for Tracked {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let block = HugeAlloc.allocate(layout)?;
        self.base
            .store(block.cast::<u8>().as_ptr() as usize, Ordering::Relaxed);
        self.size.store(layout.size(), Ordering::Relaxed);
        Ok(block)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if self.base.load(Ordering::Relaxed) == ptr.as_ptr() as usize {
            self.base.store(0, Ordering::Relaxed);
            self.size.store(0, Ordering::Relaxed);
        }
        // SAFETY: `ptr` was allocated by `HugeAlloc` with `layout` (see `allocate`).
        unsafe { HugeAlloc.deallocate(ptr, layout) }
    }
}

/// A vector for the big tables that come and go with WAL segments (a segment's gathered index,
/// an index file's bytes): from 2 MiB on, a mapping of its own that goes back to the system
/// when freed. From `malloc` they would leave megabytes behind in the arena of whichever thread
/// made them (the WAL thread grows them, the sealer frees them), each arena holding on to the
/// high-water mark of its own.
pub type Table<T> = allocator_api2::vec::Vec<T, HugeAlloc>;

/// A [`Table`] of `items`.
pub fn table<T>(items: impl IntoIterator<Item = T>) -> Table<T> {
    let mut table = Table::new_in(HugeAlloc);
    table.extend(items);
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20,000 keys inserted into a table grown through several blocks (the last one is the
    /// table's): how many sit in the bucket `Tracked` names, where a wrong guess of the layout
    /// would find next to none. In 32,768 buckets about 70% do.
    fn keys_at_home<V: Copy>(value: impl Fn(u64) -> V) -> usize {
        let bucket_bytes = std::mem::size_of::<(u64, V)>();
        let mut map: hashbrown::HashMap<u64, V, ahash::RandomState, Tracked> =
            hashbrown::HashMap::with_capacity_and_hasher_in(
                16,
                ahash::RandomState::new(),
                Tracked::default(),
            );
        for n in 0..20_000u64 {
            map.insert(n, value(n));
        }
        let mut at_home = 0;
        for n in 0..20_000u64 {
            let hash = map.hasher().hash_one(n);
            let (control, bucket) = map.allocator().home(hash, bucket_bytes).unwrap();
            let key = map.get_key_value(&n).unwrap().0 as *const u64 as usize;
            assert!(control > bucket, "control bytes follow the buckets");
            at_home += usize::from(key == bucket);
        }
        map.clear();
        map.shrink_to_fit();
        assert!(
            map.allocator().home(1, bucket_bytes).is_none(),
            "no block once freed"
        );
        at_home
    }

    /// The layout `Tracked` assumes is hashbrown's: most keys sit in the bucket it names. If
    /// an upgrade changed the layout, the prefetches would miss (slower, still correct), and
    /// this test says so. Buckets of 64 bytes (the account index's) and of 24 (the ids').
    #[test]
    fn tracked_tables_find_their_keys_home_buckets() {
        for (bytes, at_home) in [
            (64, keys_at_home(|n| [n; 7])),
            (24, keys_at_home(|n| [n; 2])),
        ] {
            assert!(
                at_home > 10_000,
                "{bytes}-byte buckets: {at_home} of 20,000 keys in their home bucket"
            );
        }
    }

    #[test]
    fn big_and_small_tables_work_and_grow() {
        let mut map: hashbrown::HashMap<u64, [u64; 4], ahash::RandomState, HugeAlloc> =
            hashbrown::HashMap::with_capacity_and_hasher_in(
                16,
                ahash::RandomState::new(),
                HugeAlloc,
            );
        for n in 0..300_000u64 {
            map.insert(n, [n; 4]);
        }
        for n in (0..300_000u64).step_by(7) {
            assert_eq!(map.get(&n), Some(&[n; 4]));
            map.remove(&n);
        }
        assert_eq!(map.len(), 300_000 - 300_000usize.div_ceil(7));
        map.shrink_to_fit();
        assert!(map.get(&7).is_none() && map.get(&8) == Some(&[8; 4]));
    }

    #[test]
    fn deferred_mappings_are_listed_until_unmapped() {
        if !cfg!(unix) {
            return;
        }
        let layout = Layout::from_size_align(HUGE, 8).unwrap();
        let guard = defer();
        let block = HugeAlloc.allocate(layout).unwrap();
        let address = block.cast::<u8>().as_ptr() as usize;
        assert!(deferred()
            .iter()
            .any(|&(a, len)| a == address && len == HUGE));
        drop(guard);
        // SAFETY: the block was allocated just above with this layout and is not used again.
        unsafe { HugeAlloc.deallocate(block.cast(), layout) };
        assert!(!deferred().iter().any(|&(a, _)| a == address));
    }

    #[test]
    fn only_big_layouts_are_mapped() {
        assert_eq!(
            mapped_len(Layout::from_size_align(HUGE - 1, 8).unwrap()),
            None
        );
        if cfg!(unix) {
            assert_eq!(
                mapped_len(Layout::from_size_align(HUGE + 1, 16).unwrap()),
                Some(2 * HUGE)
            );
        }
        assert_eq!(
            mapped_len(Layout::from_size_align(HUGE, 8192).unwrap()),
            None
        );
    }
}
