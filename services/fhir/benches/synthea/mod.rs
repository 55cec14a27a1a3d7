//! Where the benchmarks find the Synthea data (one copy, included by the benchmarks of
//! `hub-fhir`, `hub-fhirpath` and `fhir-hub`).
//!
//! The benchmarks proper run on the full data set (191,093 resources, 88,674 Observations),
//! which is not in the repository: `FHIR_HUB_SYNTHEA`, or
//! `../shared/data/synthea-r4-resources.ndjson.gz` beside the repository. Without it they say
//! what to do and stop (exit 0). Smoke runs use the 4,000 Observations the repository keeps
//! (`integration-tests/data`, see its README).

use std::path::{Path, PathBuf};

/// The repository (`services/<crate>` is two levels down).
fn root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).unwrap_or(manifest)
}

/// The full data set, or `None` after telling on stderr how to get it.
pub(crate) fn full() -> Option<PathBuf> {
    let path = std::env::var_os("FHIR_HUB_SYNTHEA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            root()
                .parent()
                .unwrap_or(root())
                .join("shared/data/synthea-r4-resources.ndjson.gz")
        });
    if path.is_file() {
        return Some(path);
    }
    eprintln!(
        "benchmark skipped: the Synthea data set is not at {}.\n\
         It is synthea-r4-resources.ndjson.gz (191,093 synthetic R4 resources, one per line, \
         from smart-on-fhir/generated-sample-data, Apache-2.0; see \
         integration-tests/data/README.md). Set FHIR_HUB_SYNTHEA=/path/to/it, or put it at \
         ../shared/data/ beside the repository, and run again.",
        path.display()
    );
    None
}

/// The 4,000 Observations kept in the repository (smoke runs).
#[allow(dead_code)]
pub(crate) fn subset() -> PathBuf {
    root().join("integration-tests/data/synthea-r4-observations.ndjson.gz")
}
