//! `cargo fuzz run caa_value`: see `checks::caa_value` for what it checks.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one check
mod checks;
libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::caa_value(data));
