//! `cargo fuzz run bundle_jcs`: see `checks::bundle_jcs` for what it checks.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one check
mod checks;
libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bundle_jcs(data));
