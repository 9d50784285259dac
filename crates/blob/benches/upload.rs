//! Attachment upload throughput and memory, to a local directory:
//!
//! ```text
//! cargo bench -p continuum-blob --bench upload            # 16 MiB, 256 MiB, 1 GiB
//! cargo bench -p continuum-blob --bench upload -- 64 512  # sizes in MiB
//! ```
//!
//! `BLOB_BENCH_DIR` picks the directory (default: the system temp dir). Peak
//! heap is counted by this binary's global allocator (live bytes, reset before
//! each run); VmHWM is the process's resident high-water mark, which also
//! holds the binary, the page tables and the runtime's threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use continuum_blob::{BlobStore, LocalDir, bench};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes `--bench`; anything numeric is a size in MiB.
    let mut sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        sizes = vec![16, 256, 1024];
    }
    let base = std::env::var_os("BLOB_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base).expect("bench directory");
    let store = BlobStore::new(LocalDir::open(tmp.path()).expect("local store"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "{:>9} {:>12} {:>14} {:>16} {:>11}",
        "size", "upload MB/s", "download MB/s", "peak heap (KiB)", "VmHWM (KiB)"
    );
    for mib in sizes {
        let size = mib << 20;
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let report = rt
            .block_on(bench::upload(size, &store))
            .unwrap_or_else(|e| panic!("{mib} MiB: {e}"));
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        println!(
            "{:>6} MiB {:>12.0} {:>14.0} {:>16} {:>11}",
            mib,
            report.upload_mb_s(),
            report.download_mb_s(),
            peak / 1024,
            vm_hwm_kib()
        );
    }
}
