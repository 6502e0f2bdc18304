//! What commands print on stdout. A reader that goes away early (`natster-global … | head`,
//! `| true`) ends the output, not the command with a panic: every write reports a closed pipe
//! as [`std::io::ErrorKind::BrokenPipe`], which the command turns into a quiet exit 0.

use std::io::Write;

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Writes `text` and a newline to stdout.
pub fn line(text: impl std::fmt::Display) -> std::io::Result<()> {
    print(&format!("{text}\n"))
}

/// Whether `error` means stdout's reader has gone away.
pub fn is_closed(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}

/// `println!` that returns the write's `std::io::Result` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
