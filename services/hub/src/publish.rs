//! `fhir-hub publish`: read NDJSON (FHIR resources and/or change envelopes) from a file or
//! stdin, validate every line, then publish them to the changes topic with a progress bar.
//!
//! Validation covers the whole input before the first record is published, so a bad line
//! publishes nothing. It runs on every core, in blocks of lines, while the connection to the
//! log is made.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use hub_fhir::Action;
use hub_fhir::raw_event::RawEvent;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;

/// Options of one publish run.
pub struct PublishArgs<'a> {
    /// `None` or `-` reads stdin.
    pub input: Option<&'a Path>,
    pub tenant: Option<String>,
    pub action: Option<Action>,
    pub chunk: usize,
    /// Draw a progress bar (a terminal on stderr and not `--quiet`).
    pub progress: bool,
}

/// What validating some lines gives: their records, or the first bad line's number and why.
type Validated = Result<Vec<hub_log::Record>, (usize, hub_fhir::OperationOutcome)>;

/// Lines read and validated at a time: validation stops at the first block with a bad line.
const BLOCK_LINES: usize = 16_384;

/// The validated events as log records, or the first bad line as an error (1-based line
/// number + outcome). Each event is kept only as the record it becomes (its parsed tree is
/// dropped at once): a large input costs its records' bytes, not ten times that in trees.
/// Lines are read in blocks, each block validated on every core, in order, while the next
/// block is read.
pub fn read_records(
    reader: impl Read + Send,
    tenant: &str,
    action: Option<Action>,
) -> anyhow::Result<Validated> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut records = Vec::new();
    let mut input = BufReader::with_capacity(1 << 20, reader);
    let mut read = 0;
    let mut block = read_block(&mut input, &mut read)?;
    while !block.lines.is_empty() {
        let (validated, next) = std::thread::scope(|s| {
            let validating = s.spawn(|| validate_block(&block.numbered(), tenant, action, threads));
            let next = read_block(&mut input, &mut read);
            (validating.join(), next)
        });
        let validated = validated
            .map_err(|_| anyhow::anyhow!("validating the input failed (a validator panicked)"))??;
        match validated {
            Ok(mut r) => records.append(&mut r),
            Err(bad) => return Ok(Err(bad)),
        }
        block = next?;
    }
    Ok(Ok(records))
}

/// Lines read at once: their text in one buffer, and each non-blank line's number and place.
#[derive(Default)]
struct Block {
    text: Vec<u8>,
    lines: Vec<(usize, std::ops::Range<usize>)>,
}

impl Block {
    fn numbered(&self) -> Vec<(usize, &[u8])> {
        self.lines
            .iter()
            .map(|(n, at)| (*n, self.text.get(at.clone()).unwrap_or_default()))
            .collect()
    }
}

/// Up to [`BLOCK_LINES`] non-blank lines; `read` counts the lines read so far.
fn read_block(input: &mut impl BufRead, read: &mut usize) -> anyhow::Result<Block> {
    let mut block = Block::default();
    while block.lines.len() < BLOCK_LINES {
        let start = block.text.len();
        if input
            .read_until(b'\n', &mut block.text)
            .context("reading input")?
            == 0
        {
            break;
        }
        *read += 1;
        if block.text.last() == Some(&b'\n') {
            block.text.pop();
        }
        let end = block.text.len();
        let line = block.text.get(start..end).unwrap_or_default();
        if line.iter().all(u8::is_ascii_whitespace) {
            block.text.truncate(start);
        } else {
            block.lines.push((*read, start..end));
        }
    }
    Ok(block)
}

/// Validate numbered lines in `threads` slices at once; the records in order, or the
/// lowest-numbered bad line.
fn validate_block(
    block: &[(usize, &[u8])],
    tenant: &str,
    action: Option<Action>,
    threads: usize,
) -> anyhow::Result<Validated> {
    let one = |lines: &[(usize, &[u8])]| -> Validated {
        let mut records = Vec::with_capacity(lines.len());
        for &(n, line) in lines {
            match RawEvent::from_ndjson_line_named(line, action, tenant) {
                Ok((e, _)) => records.push(crate::api::ingest::record(&e)),
                Err(e) => return Err((n, e.to_outcome().at(format!("line {n}")))),
            }
        }
        Ok(records)
    };
    if threads <= 1 || block.len() < 2 * threads {
        return Ok(one(block));
    }
    let per = block.len().div_ceil(threads);
    let parts = std::thread::scope(|s| {
        let running: Vec<_> = block.chunks(per).map(|c| s.spawn(move || one(c))).collect();
        running
            .into_iter()
            .map(|t| t.join())
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(|_| anyhow::anyhow!("validating the input failed (a validator thread panicked)"))?;
    let mut records = Vec::with_capacity(block.len());
    // slices in line order: the first that failed holds the lowest bad line
    for part in parts {
        match part {
            Ok(mut r) => records.append(&mut r),
            Err(bad) => return Ok(Err(bad)),
        }
    }
    Ok(Ok(records))
}

/// Run the command; returns the number of events published.
pub async fn run(config: &Config, args: PublishArgs<'_>) -> anyhow::Result<usize> {
    let tenant = args
        .tenant
        .clone()
        .unwrap_or_else(|| config.tenancy.default_tenant.clone());
    let reader: Box<dyn Read + Send> = match args.input {
        None => Box::new(std::io::stdin()),
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin()),
        Some(p) => {
            Box::new(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?)
        }
    };
    // connect to the log while the input is validated; nothing is sent before it all is
    let opening = {
        let config = config.clone();
        tokio::spawn(async move { crate::state::open_log(&config).await })
    };
    let validating = spinner(args.progress, "validating");
    let action = args.action;
    let read = tokio::task::spawn_blocking(move || read_records(reader, &tenant, action))
        .await
        .context("validating the input")?;
    validating.finish_and_clear();
    let records = match read {
        Ok(Ok(records)) => records,
        Ok(Err((line, outcome))) => {
            opening.abort();
            eprintln!("{}", serde_json::to_string_pretty(&outcome.to_json())?);
            anyhow::bail!(
                "line {line} is not a valid change event or resource: nothing was published"
            );
        }
        Err(e) => {
            opening.abort();
            return Err(e);
        }
    };
    let log = opening.await.context("opening the event log")??;
    let bar = if args.progress {
        let bar =
            ProgressBar::with_draw_target(Some(records.len() as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let log: Arc<dyn hub_log::EventLog> = log;
    log.publish_many(
        &config.log.changes_topic,
        &records,
        args.chunk.max(1),
        &|n| bar.inc(n as u64),
    )
    .await
    .with_context(|| format!("publishing after {} events", bar.position()))?;
    bar.finish_and_clear();
    Ok(records.len())
}

fn spinner(show: bool, msg: &'static str) -> ProgressBar {
    if show {
        let s = ProgressBar::new_spinner();
        s.set_message(msg);
        s.enable_steady_tick(std::time::Duration::from_millis(120));
        s
    } else {
        ProgressBar::hidden()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        let input = b"{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n\n{\"resourceType\":\"Nope\",\"id\":\"x\"}\n";
        let r = read_records(&input[..], "default", None).unwrap();
        let (line, oo) = r.unwrap_err();
        assert_eq!(line, 3);
        assert!(oo.summary().contains("Nope"));
        let ok = read_records(
            &b"{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n"[..],
            "default",
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ok.len(), 1);
        // blank and whitespace-only lines count, a last line needs no newline
        let input = b"\n  \t\n{\"resourceType\":\"Patient\",\"id\":\"p1\"}\r\n\n{\"resourceType\":\"Patient\",\"id\":\"p2\"}";
        let ok = read_records(&input[..], "default", None).unwrap().unwrap();
        assert_eq!(ok.len(), 2);
        let input = b"\n\n\n{\"resourceType\":\"Patient\"";
        let (line, _) = read_records(&input[..], "default", None)
            .unwrap()
            .unwrap_err();
        assert_eq!(line, 4);
        assert!(
            read_records(&b""[..], "default", None)
                .unwrap()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn blocks_validated_on_many_threads_keep_the_order_and_the_first_bad_line() {
        let line = |i: usize| format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n");
        let n = BLOCK_LINES + 1000;
        let mut input: String = (0..n).map(line).collect();
        let ok = read_records(input.as_bytes(), "default", None)
            .unwrap()
            .unwrap();
        assert_eq!(ok.len(), n);
        for (i, r) in ok.iter().enumerate() {
            assert!(r.key.ends_with(&format!("/p{i}")), "{i}: {}", r.key);
        }
        // two bad lines in one block, on different threads: the first is reported
        let bad = "{\"resourceType\":\"Nope\",\"id\":\"x\"}\n";
        let mut lines: Vec<String> = (0..n).map(line).collect();
        lines[BLOCK_LINES + 900] = bad.into();
        lines[BLOCK_LINES + 10] = bad.into();
        input = lines.concat();
        let (at, _) = read_records(input.as_bytes(), "default", None)
            .unwrap()
            .unwrap_err();
        assert_eq!(at, BLOCK_LINES + 11);
        for t in [1, 2, 3, 7] {
            let numbered: Vec<(usize, &[u8])> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| (i + 1, l.trim_end().as_bytes()))
                .collect();
            let got = validate_block(&numbered, "default", None, t).unwrap();
            assert_eq!(
                got.map(|_| 0).unwrap_err().0,
                BLOCK_LINES + 11,
                "{t} threads"
            );
        }
    }
}
