//! Heap tuning for long-running services, applied once at process start.
//!
//! glibc serves a large allocation with mmap and unmaps it on free — until the first
//! such free, after which it raises its mmap threshold (up to 32 MiB) and keeps later
//! multi-MiB buffers in its arenas instead. A burst of concurrent uploads (8 MiB part
//! buffers) then leaves the process holding hundreds of MiB it no longer uses, for
//! good. Pinning the threshold keeps part-sized buffers mmapped, so that memory goes
//! back to the system when an upload ends. Smaller buffers (messages, frames) stay on
//! the heap, where reuse is cheap.

/// Allocations at least this large are mmapped and returned on free.
const MMAP_THRESHOLD: usize = 4 * 1024 * 1024;

/// Call once at start. A no-op where the allocator is not glibc's.
pub fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt changes allocator tuning only and takes glibc's own locks, so
    // other threads may be allocating meanwhile. A refusal (it returns 0) leaves
    // glibc's default, which is safe.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}
