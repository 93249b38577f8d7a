//! What `mote verify` reads: receipt JSON from anyone.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mote_runtime::Receipt::verify_json(text);
    }
});
