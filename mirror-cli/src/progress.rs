//! Progress bars on stderr, only where someone watches: stderr is a terminal and the output
//! is not JSON. Everywhere else the bar is absent and costs nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use mirror_core::Progress;

/// A progress bar over a volume's bytes, fed in blocks, or nothing.
#[derive(Debug)]
pub struct Bar {
    pb: Option<ProgressBar>,
    block: u64,
    size: u64,
}

impl Bar {
    /// A bar titled `what` over a volume of `size` bytes in blocks of `block` bytes, shown
    /// only when stderr is a terminal and `quiet` is false.
    pub fn new(what: &str, size: u64, block: u64, quiet: bool) -> Bar {
        if quiet || !std::io::stderr().is_terminal() {
            return Bar {
                pb: None,
                block,
                size,
            };
        }
        let pb = ProgressBar::new(size);
        let style = ProgressStyle::with_template(
            "{prefix:8} [{bar:40}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {msg})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        pb.set_style(style);
        pb.set_prefix(what.to_owned());
        pb.set_message(eta_text(None));
        Bar {
            pb: Some(pb),
            block,
            size,
        }
    }

    fn bytes(&self, blocks: u64) -> u64 {
        blocks.saturating_mul(self.block).min(self.size)
    }

    /// Records engine progress (blocks done of a total that may be less than the volume:
    /// a dirty-map resync compares only dirty regions).
    pub fn update(&self, p: Progress) {
        if let Some(pb) = &self.pb {
            let total = self.bytes(p.total);
            if pb.length() != Some(total) {
                pb.set_length(total);
            }
            pb.set_position(self.bytes(p.done));
            pb.set_message(eta_text(p.eta));
        }
    }

    /// Advances by `n` blocks.
    pub fn inc(&self, n: u64) {
        if let Some(pb) = &self.pb {
            pb.set_position((pb.position() + n * self.block).min(self.size));
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(pb) = &self.pb {
            pb.finish_and_clear();
        }
    }
}

/// The engine's estimate of the time left (its recent rate, smoothed, so it holds steady
/// while the job yields to the application's writes).
fn eta_text(eta: Option<std::time::Duration>) -> String {
    match eta {
        Some(d) => format!(
            "{} left",
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
        ),
        None => "estimating".to_owned(),
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}
