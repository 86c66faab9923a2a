//! `cargo fuzz run route_name`: see `checks::route_name` for what it checks.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one check
mod checks;
libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::route_name(data));
