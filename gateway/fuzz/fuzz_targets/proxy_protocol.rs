//! Raw bytes as the start of a connection behind a load balancer. Invariants: no panic; a
//! header's length never exceeds the input; a complete header stays complete (same result)
//! when more bytes follow; every proper prefix of a complete header asks for more or is refused.
#![no_main]
use gatehouse::proxy_protocol::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((header, len))) = parse(data) {
        assert!(len <= data.len());
        let mut longer = data.to_vec();
        longer.push(0x16);
        assert_eq!(parse(&longer), Ok(Some((header, len))));
        for end in 0..len {
            assert!(!matches!(parse(&data[..end]), Ok(Some(_))), "prefix {end} complete");
        }
    }
});
