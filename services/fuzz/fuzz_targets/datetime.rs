//! Dates, times, instants and search numbers, as search values and FHIRPath literals.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = hub_fhir::datetime::parse(s);
    let _ = hub_fhir::time_fmt::parse_instant(s);
    let _ = hub_fhir::decimal::SearchNumber::parse(s);
    let _ = hub_fhirpath::temporal::Temporal::parse_any(s);
    let _ = hub_fhirpath::temporal::Temporal::parse_date(s);
    let _ = hub_fhirpath::temporal::Temporal::parse_time(s);
    let _ = hub_fhirpath::temporal::Temporal::parse_datetime(s);
});
