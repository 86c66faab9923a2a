//! Raw bytes as the start of a connection: reassembly across records, then parsing.
//! Invariants: no panic; a parsed SNI is lower-case ASCII of at most 253 bytes; a result never
//! changes when more bytes are appended after a complete hello.
#![no_main]
use gatehouse::hello::{parse, record, MAX_HELLO_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_HELLO_BYTES + 64)];
    if let Ok(Some(message)) = record::reassemble(data) {
        let parsed = parse::parse(&message);
        if let Ok(hello) = &parsed {
            assert!(hello.sni.len() <= 253);
            assert!(hello.sni.bytes().all(|b| !b.is_ascii_uppercase() && b.is_ascii()));
        }
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
        let again = record::reassemble(&longer).map(|m| m.map(|m| parse::parse(&m)));
        assert_eq!(again, Ok(Some(parsed)));
    }
});
