//! Tracing setup: human-readable by default, JSON with `FHIR_HUB_LOG_FORMAT=json`; the level
//! from `RUST_LOG` (default `info`). Colours only when stderr is a terminal and `NO_COLOR`
//! is unset or empty (no-color.org): a log piped to a file or a collector carries no escapes.
//!
//! Logs carry no endpoint URLs, resource ids or binding tokens, at any level: request spans
//! name the method and path without the query (`?token=` is a credential), and the libraries
//! that log the URLs they connect to or the statements they run at debug level (HTTP client
//! and connection pool, SQL) stay at `info` whatever `RUST_LOG` asks.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Libraries whose debug output names endpoints, hosts or statements: capped at `info`.
const CAPPED: &[&str] = &[
    "reqwest=info",
    "hyper=info",
    "hyper_util=info",
    "h2=info",
    "rustls=info",
    "tonic=info",
    "tower=info",
    "sqlx=info",
];

/// The filter of `RUST_LOG` (`env`), with [`CAPPED`] always applied.
fn filter(env: Option<&str>) -> EnvFilter {
    let mut f = env
        .and_then(|e| EnvFilter::try_new(e).ok())
        .unwrap_or_else(|| EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    for d in CAPPED {
        if let Ok(d) = d.parse() {
            f = f.add_directive(d);
        }
    }
    f
}

/// A request's URI as logged: the path, and `?…` in place of any query.
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    match uri.query() {
        Some(_) => format!("{}?…", uri.path()),
        None => uri.path().to_owned(),
    }
}

/// Whether log lines carry ANSI colours: on a terminal, unless `NO_COLOR` is set (and not
/// empty).
fn colours(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

pub fn init() {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let ansi = colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = if std::env::var("FHIR_HUB_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests): keep the first subscriber.
    drop(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours(true, None));
        assert!(colours(true, Some("".into())));
        assert!(!colours(true, Some("1".into())));
        assert!(!colours(false, None));
    }

    #[test]
    fn queries_and_library_debug_output_stay_out_of_the_log() {
        let uri: axum::http::Uri = "/fhir/Subscription/s/$stream?token=secret-token"
            .parse()
            .unwrap();
        assert_eq!(redacted_uri(&uri), "/fhir/Subscription/s/$stream?…");
        let plain: axum::http::Uri = "/health".parse().unwrap();
        assert_eq!(redacted_uri(&plain), "/health");
        let f = filter(Some("debug")).to_string();
        for d in ["reqwest=info", "hyper_util=info", "sqlx=info"] {
            assert!(f.contains(d), "{f}");
        }
    }
}
