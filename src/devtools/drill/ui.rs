//! What a running drill shows on stderr.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress on a terminal, event lines otherwise (unless `--json`).
pub(super) struct Ui {
    pub(super) bar: Option<ProgressBar>,
    lines: bool,
}

impl Ui {
    pub(super) fn new(json: bool, total: u64) -> Ui {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{spinner} {prefix:>10} [{bar:30}] {pos}/{len} leads {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b
        });
        Ui {
            lines: bar.is_none() && !json,
            bar,
        }
    }

    pub(super) fn event(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(format!("  {msg}")),
            None if self.lines => eprintln!("drill: {msg}"),
            None => {}
        }
    }

    pub(super) fn stage(&self, prefix: &str, total: u64) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_length(total);
            b.set_prefix(prefix.to_string());
        }
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
