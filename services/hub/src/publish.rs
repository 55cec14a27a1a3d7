//! `fhir-hub publish`: read NDJSON (FHIR resources and/or change envelopes) from a file or
//! stdin, validate every line, then publish them to the changes topic with a progress bar.
//!
//! Validation covers the whole input before the first record is published, so a bad line
//! publishes nothing.

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

/// The validated events as log records, or the first bad line as an error (1-based line
/// number + outcome). Each event is kept only as the record it becomes (its parsed tree is
/// dropped at once): a large input costs its records' bytes, not ten times that in trees.
pub fn read_records(
    reader: impl Read,
    tenant: &str,
    action: Option<Action>,
) -> anyhow::Result<Result<Vec<hub_log::Record>, (usize, hub_fhir::OperationOutcome)>> {
    let mut records = Vec::new();
    for (i, line) in BufReader::new(reader).split(b'\n').enumerate() {
        let line = line.context("reading input")?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match RawEvent::from_ndjson_line_named(&line, action, tenant) {
            Ok((e, _)) => records.push(crate::api::ingest::record(&e)),
            Err(e) => return Ok(Err((i + 1, e.to_outcome().at(format!("line {}", i + 1))))),
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
    let validating = spinner(args.progress, "validating");
    let records = match read_records(reader, &tenant, args.action)? {
        Ok(records) => records,
        Err((line, outcome)) => {
            validating.finish_and_clear();
            eprintln!("{}", serde_json::to_string_pretty(&outcome.to_json())?);
            anyhow::bail!(
                "line {line} is not a valid change event or resource: nothing was published"
            );
        }
    };
    validating.finish_and_clear();

    let log = crate::open_log(config).await?;
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
    }
}
