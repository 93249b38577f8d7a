//! A KServe v2 request as the REST endpoint gets it: a JSON part and a
//! binary tail (Triton's extension), split where the first 0xff byte is
//! (JSON text never holds one). The endpoint's one-pass parser must give
//! exactly the reference decoder's result, error included.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (json, tail) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    // What the endpoint runs: the one-pass parser, which must agree with
    // the reference decoder on every input.
    let fast = mote_protocol::kserve_json::parse_infer_body(json, tail);
    if let Ok(body) = &fast {
        for t in &body.request.inputs {
            t.validate().expect("a parsed input is valid");
        }
        let _ = mote_protocol::kserve::output_preferences(&body.header);
    }
    match serde_json::from_slice::<serde_json::Value>(json) {
        Ok(v) => {
            let reference = mote_protocol::kserve::parse_request_with_binary(&v, tail);
            assert_eq!(fast.map(|b| b.request), reference, "one-pass and reference parsers disagree");
            let _ = mote_protocol::kserve::output_preferences(&v);
        }
        Err(_) => assert!(fast.is_err(), "the one-pass parser took JSON serde_json refuses"),
    }
});
