//! `cargo fuzz run custom_domain_txt`: see `checks::custom_domain_txt` for what it checks.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one check
mod checks;
libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::custom_domain_txt(data));
