//! Progress bars on stderr, only where someone watches: stderr is a terminal and the output
//! is not JSON. Everywhere else the bar is absent and costs nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use mirror_core::Progress;

/// A progress bar counting blocks, or nothing.
#[derive(Debug)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar titled `what`, shown only when stderr is a terminal and `quiet` is false.
    pub fn new(what: &str, total: u64, quiet: bool) -> Bar {
        if quiet || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let pb = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{msg:8} [{bar:40}] {pos}/{len} blocks ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        pb.set_style(style);
        pb.set_message(what.to_owned());
        Bar(Some(pb))
    }

    /// Records engine progress.
    pub fn update(&self, p: Progress) {
        if let Some(pb) = &self.0 {
            if pb.length() != Some(p.total) {
                pb.set_length(p.total);
            }
            pb.set_position(p.done);
        }
    }

    /// Advances by `n` blocks.
    pub fn inc(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(n);
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}
