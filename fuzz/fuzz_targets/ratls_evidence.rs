//! `cargo fuzz run ratls_evidence`: see `checks::ratls_evidence` for what it checks.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one check
mod checks;
libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ratls_evidence(data));
