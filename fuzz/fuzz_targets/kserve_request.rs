//! A KServe v2 request as the REST endpoint gets it: a JSON part and a
//! binary tail (Triton's extension), split where the first 0xff byte is
//! (JSON text never holds one).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (json, tail) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) {
        if let Ok(req) = mote_protocol::kserve::parse_request_with_binary(&v, tail) {
            for t in &req.inputs {
                t.validate().expect("a parsed input is valid");
            }
        }
        let _ = mote_protocol::kserve::output_preferences(&v);
    }
});
