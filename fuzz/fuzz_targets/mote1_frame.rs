//! `mote/1` request and response frames (docs/protocol.md).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mote_agent::quic::decode_request(data);
    let _ = mote_agent::quic::decode_response(data);
});
