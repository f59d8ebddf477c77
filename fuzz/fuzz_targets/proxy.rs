//! Parses arbitrary bytes as a PROXY protocol header. Besides not panicking, the parser must keep the promise
//! `read_proxy_header` relies on to never read past a header: "need more bytes" means every byte seen belongs
//! to the header, so no prefix of a header is ever refused, and a header parses the same on its own.

#![no_main]

use halyard_transport::proxy::{parse, MAX_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some((header, n))) => {
            assert!(n > 0 && n <= data.len() && n <= MAX_HEADER_LEN, "consumed {n} of {}", data.len());
            assert_eq!(parse(&data[..n]), Ok(Some((header, n))), "the header alone parses the same");
            for k in [0, n / 2, n - 1] {
                assert_eq!(parse(&data[..k]), Ok(None), "prefix of {k} bytes of a {n}-byte header");
            }
        }
        Ok(None) => {
            assert!(data.len() < MAX_HEADER_LEN, "asked for more after {} bytes", data.len());
            for k in [0, data.len() / 2, data.len().saturating_sub(1)] {
                assert_eq!(parse(&data[..k]), Ok(None), "prefix of {k} bytes of an incomplete header");
            }
        }
        Err(_) => {}
    }
});
