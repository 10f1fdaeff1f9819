//! Progress bars for the client's long transfers (`read`, `write`, `lock format`): indicatif, drawn on stderr only
//! when stderr is a terminal, so scripts and pipes see nothing but the command's own output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Transfers smaller than this finish before a bar would help.
pub const MIN_SHOWN_BYTES: u64 = 16 << 20;

pub struct Progress(ProgressBar);

impl Progress {
    /// A bar over `total` bytes, drawn when `wanted`, the transfer is large enough and stderr is a terminal.
    pub fn bytes(total: u64, wanted: bool) -> Progress {
        let shown = wanted && total >= MIN_SHOWN_BYTES && std::io::stderr().is_terminal();
        let target = if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "[{bar:30}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-"),
        );
        Progress(bar)
    }

    pub fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
