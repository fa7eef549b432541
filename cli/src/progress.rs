//! Progress bars for transfers: one per file (bytes, rate, ETA), and a total when a
//! command moves several files, drawn together by one `MultiProgress` on stderr.
//!
//! When bars are hidden (`--json`, or stdout is not a terminal) every call still works
//! and draws nothing, so the transfer code never asks whether anyone is watching.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

const LABEL_WIDTH: usize = 30;
const TEMPLATE: &str = "{prefix:30} {msg:9} [{bar:25}] {binary_bytes:>10} / {binary_total_bytes:<10} {binary_bytes_per_sec:>12}  ETA {eta}";

pub struct Progress {
    multi: MultiProgress,
}

impl Progress {
    pub fn new(visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
        }
    }

    /// A bar for the sum of several transfers; add it before theirs so it stays on top.
    pub fn total(&self, files: usize, bytes: u64) -> ProgressBar {
        let bar = self.bar(&format!("total ({files} files)"), bytes);
        bar.set_message("");
        bar
    }

    /// A bar for one file of `len` bytes, counted into `total` if there is one.
    pub fn transfer(&self, name: &str, len: u64, total: Option<&ProgressBar>) -> Transfer {
        Transfer {
            bar: self.bar(name, len),
            total: total.cloned(),
            counted: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs `print` with the bars cleared, so a printed line does not tear them.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        self.multi.suspend(print)
    }

    fn bar(&self, name: &str, len: u64) -> ProgressBar {
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = self.multi.add(ProgressBar::new(len).with_style(style));
        bar.set_prefix(label(name));
        bar
    }
}

/// One file's bar. Hashing moves the bar without counting into the total; sending
/// counts, and can restart from any offset (a retry, a resumed session) without the
/// total counting bytes twice.
#[derive(Clone)]
pub struct Transfer {
    bar: ProgressBar,
    total: Option<ProgressBar>,
    /// What this file has added to `total` so far.
    counted: Arc<AtomicU64>,
}

impl Transfer {
    pub fn hashing(&self) {
        self.bar.set_message("sha256");
        self.bar.set_position(0);
    }

    pub fn hashed(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    /// Starts (or restarts) sending at `offset`.
    pub fn sending(&self, offset: u64) {
        self.bar.set_message("sending");
        self.start_at(offset);
    }

    /// Starts receiving at `offset`: bytes an earlier run left on disk count as done.
    pub fn receiving(&self, offset: u64) {
        self.bar.set_message("receiving");
        self.start_at(offset);
    }

    /// Moves to `offset` without counting the jump as speed: the rate and ETA then
    /// measure only the bytes that move from here on.
    fn start_at(&self, offset: u64) {
        self.transferred_up_to(offset);
        // The estimator notes positions when the bar ticks: note this one before
        // forgetting the rate, or the next tick sees the jump as bytes moved in no time.
        self.bar.tick();
        self.bar.reset_eta();
        if let Some(total) = self.total.as_ref().filter(|_| offset > 0) {
            total.tick();
            total.reset_eta();
        }
    }

    pub fn finishing(&self) {
        self.bar.set_message("finishing");
    }

    pub fn sent(&self, bytes: u64) {
        self.transferred_up_to(self.counted.load(Ordering::Relaxed) + bytes);
    }

    /// Sets how far the file has been sent or received.
    pub fn transferred_up_to(&self, position: u64) {
        self.bar.set_position(position);
        let before = self.counted.swap(position, Ordering::Relaxed);
        if let Some(total) = &self.total {
            total.set_position((total.position() + position).saturating_sub(before));
        }
    }

    /// Removes the bar; the command prints its own line about the file.
    pub fn done(&self) {
        self.bar.finish_and_clear();
    }
}

/// A file name that fits the label column: long names keep their end, which is the
/// part that tells files apart.
fn label(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= LABEL_WIDTH {
        return name.to_owned();
    }
    let tail: String = chars[chars.len() - (LABEL_WIDTH - 1)..].iter().collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarting_a_transfer_does_not_count_bytes_twice() {
        let progress = Progress::new(false);
        let total = progress.total(2, 300);
        let first = progress.transfer("a", 100, Some(&total));
        first.sending(0);
        first.sent(60);
        first.sending(0);
        first.sent(100);
        first.done();
        let second = progress.transfer("b", 200, Some(&total));
        second.hashing();
        second.hashed(200);
        second.sending(50);
        assert_eq!(total.position(), 150);
    }

    #[test]
    fn a_resumed_download_counts_what_was_on_disk_as_done() {
        let progress = Progress::new(false);
        let total = progress.total(2, 300);
        let resumed = progress.transfer("a", 100, Some(&total));
        resumed.hashing();
        resumed.hashed(40);
        resumed.receiving(40);
        resumed.transferred_up_to(100);
        resumed.done();
        let fresh = progress.transfer("b", 200, Some(&total));
        fresh.receiving(0);
        fresh.transferred_up_to(20);
        assert_eq!(total.position(), 120);
    }

    #[test]
    fn long_names_keep_their_end() {
        let name = format!("{}/photo.jpg", "x".repeat(40));
        let shown = label(&name);
        assert_eq!(shown.chars().count(), LABEL_WIDTH);
        assert!(shown.ends_with("photo.jpg"));
    }
}
