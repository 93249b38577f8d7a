//! Any bytes as a `mote/1` request frame, response frame and frame prefix
//! (docs/protocol.md). A frame that decodes whole has the same first
//! fields as its prefix says.
#![no_main]
use mote_protocol::mote1;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let prefix = mote1::decode_prefix(data);
    if let Ok(frame) = mote1::decode_request(data) {
        let p = prefix.expect("a whole frame has a valid prefix").expect("and all of it");
        assert_eq!((p.deployment, p.token), (frame.deployment, frame.token));
    }
    let _ = mote1::decode_response(data);
});
