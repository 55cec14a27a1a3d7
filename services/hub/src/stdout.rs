//! What the commands print on standard output. A reader that goes away early
//! (`fhir-hub config | head -1`) ends the command quietly with exit 0, as other Unix tools do.
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with `BrokenPipe` (which `println!`
//! turns into a panic): every command prints through [`Stdout`] or [`line`], which mark that
//! failure as [`Closed`], and `main` ends on it with exit 0 ([`is_closed`]).

use std::io::Write;

/// Standard output's reader has gone (a closed pipe).
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct Closed;

/// Buffered standard output whose closed-pipe error is a [`Closed`].
pub struct Stdout(std::io::BufWriter<std::io::StdoutLock<'static>>);

impl Stdout {
    pub fn lock() -> Stdout {
        Stdout(std::io::BufWriter::new(std::io::stdout().lock()))
    }
}

fn mark(e: std::io::Error) -> std::io::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, Closed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// Print `text` and a newline, flushed.
pub fn line(text: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = Stdout::lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// Whether `err` is standard output having been closed, anywhere in its chain.
pub fn is_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.is::<Closed>()
            || e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<Closed>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_stdout_is_told_apart_from_other_broken_pipes() {
        let closed = anyhow::Error::new(mark(std::io::Error::from(std::io::ErrorKind::BrokenPipe)))
            .context("printing");
        assert!(is_closed(&closed));
        // a broken pipe elsewhere (a socket, a child process) is an error like any other
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!is_closed(&other));
        assert!(!is_closed(&anyhow::Error::new(mark(std::io::Error::from(
            std::io::ErrorKind::NotFound
        )))));
    }
}
