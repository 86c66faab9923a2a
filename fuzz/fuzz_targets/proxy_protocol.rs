//! `cargo fuzz run proxy_protocol`: see `checks::proxy_protocol` for what it checks.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code)] // each target uses one check
mod checks;
libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::proxy_protocol(data));
