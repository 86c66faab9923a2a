//! `cargo fuzz run vpc_bodies`: see `checks::vpc_bodies` for what it checks.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one check
mod checks;
libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::vpc_bodies(data));
