//! KServe v2 JSON infer requests parsed straight into tensor bytes: the
//! request's structure by serde_json, each input's `data` kept as its raw
//! text and scanned once into little-endian elements (numbers by the
//! standard library's Eisel–Lemire parser): no `serde_json::Value` per
//! element, no flattened copy. A 224×224×3 FP32
//! image is 150,528 numbers; as a value tree that is 150,528 heap nodes
//! built, walked and dropped on every request.
//!
//! The fast path covers numeric and `BYTES` data in either key order.
//! Every malformed request is parsed by
//! [`crate::kserve::parse_request_with_binary`], the reference: the fast
//! path either produces exactly its result or defers to it, so errors and
//! their messages are the reference's.

use crate::kserve::{self, encode_num, KserveError, Num};
use crate::message::{Request, MAX_INPUTS};
use crate::tensor::{Datatype, IoTensor};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde::Deserializer;
use serde_json::{Map, Value};
use std::fmt;

/// A parsed infer request and the rest of its JSON header (`id`,
/// `outputs`, `parameters`: what the response is shaped by).
#[derive(Debug)]
pub struct InferBody {
    /// The request, tensors in their bytes.
    pub request: Request,
    /// The header's other fields, for [`kserve::output_preferences`] and
    /// the response `id`.
    pub header: Value,
}

/// Parses a KServe infer request: `json` is the JSON (or, with Triton's
/// binary extension, the JSON header) and `binary` the bytes after it.
pub fn parse_infer_body(json: &[u8], binary: &[u8]) -> Result<InferBody, KserveError> {
    if let Some(body) = fast(json, binary) {
        return Ok(body);
    }
    let v: Value =
        serde_json::from_slice(json).map_err(|e| KserveError::Invalid(format!("request is not valid JSON: {e}")))?;
    let request = kserve::parse_request_with_binary(&v, binary)?;
    Ok(InferBody { request, header: v })
}

/// The one-pass parse, or `None` where the reference must decide.
fn fast(json: &[u8], binary: &[u8]) -> Option<InferBody> {
    // serde_json's skipping (raw values) checks less than its `Value`
    // parser: not UTF-8 inside strings, not number ranges, not depth. So:
    // the text must be UTF-8, unknown keys are parsed as values, and
    // `scan` refuses what a value would (see there).
    let text = std::str::from_utf8(json).ok()?;
    let wire: WireRequest = serde_json::from_str(text).ok()?;
    let inputs = wire.inputs?;
    let mut names = std::collections::HashSet::with_capacity(inputs.len());
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut rest = binary;
    for input in inputs {
        let mut header = Map::new();
        for (key, v) in [("name", input.name), ("datatype", input.datatype), ("shape", input.shape)] {
            if let Some(v) = v {
                header.insert(key.into(), v);
            }
        }
        let header = Value::Object(header);
        let (name, datatype, shape) = kserve::parse_tensor_header(&header).ok()?;
        if !names.insert(name.clone()) {
            return None;
        }
        let size = input.parameters.as_ref().and_then(|p| p.get("binary_data_size"));
        let data = match (size, input.data) {
            (None, Some(raw)) if datatype == Datatype::Bytes => {
                let v: Value = serde_json::from_str(raw.get()).ok()?;
                let mut flat = Vec::new();
                kserve::flatten(&v, &mut flat);
                kserve::encode_elements(datatype, &flat).ok()?
            }
            (None, Some(raw)) => scan(raw.get(), datatype)?,
            // Binary data and `data` both: `data` would go unscanned.
            (Some(_), Some(_)) => return None,
            (Some(size), None) => {
                let size = usize::try_from(size.as_u64()?).ok()?;
                if size > rest.len() {
                    return None;
                }
                let (data, tail) = rest.split_at(size);
                rest = tail;
                data.to_vec()
            }
            _ => return None,
        };
        let t = IoTensor { name, datatype, shape, data };
        t.validate().ok()?;
        tensors.push(t);
    }
    if !rest.is_empty() {
        return None;
    }
    let parameters = kserve::parse_parameters(wire.parameters.as_ref()).ok()?;
    let mut header = Map::new();
    for (key, v) in [("id", wire.id), ("outputs", wire.outputs), ("parameters", wire.parameters)] {
        if let Some(v) = v {
            header.insert(key.into(), v);
        }
    }
    Some(InferBody { request: Request { inputs: tensors, parameters }, header: Value::Object(header) })
}

/// The request object, with each input's data already encoded.
#[derive(Default)]
struct WireRequest<'de> {
    id: Option<Value>,
    inputs: Option<Vec<WireTensor<'de>>>,
    outputs: Option<Value>,
    parameters: Option<Value>,
}

#[derive(Default)]
struct WireTensor<'de> {
    name: Option<Value>,
    datatype: Option<Value>,
    shape: Option<Value>,
    parameters: Option<Value>,
    /// `data`'s JSON text, encoded once the datatype is known (it may
    /// come later: serde_json writes keys in sorted order).
    data: Option<&'de RawValue>,
}

/// A later duplicate key replaces the earlier one, as in a
/// `serde_json::Value` object.
impl<'de> de::Deserialize<'de> for WireRequest<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireRequest<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a KServe infer request object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireRequest<'de>, A::Error> {
                let mut r = WireRequest::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "id" => r.id = Some(map.next_value()?),
                        // A second `inputs` would leave the first one's
                        // raw `data` unchecked: the reference decides.
                        "inputs" if r.inputs.is_some() => return Err(de::Error::custom("duplicate inputs")),
                        "inputs" => r.inputs = Some(map.next_value_seed(Inputs)?),
                        "outputs" => r.outputs = Some(map.next_value()?),
                        "parameters" => r.parameters = Some(map.next_value()?),
                        _ => {
                            map.next_value::<Value>()?;
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(V)
    }
}

/// The `inputs` array, refused past [`MAX_INPUTS`] as soon as it is seen.
struct Inputs;

impl<'de> DeserializeSeed<'de> for Inputs {
    type Value = Vec<WireTensor<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Inputs {
    type Value = Vec<WireTensor<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of input tensors")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(t) = seq.next_element::<WireTensor<'de>>()? {
            if out.len() == MAX_INPUTS {
                return Err(de::Error::custom("too many inputs"));
            }
            out.push(t);
        }
        Ok(out)
    }
}

impl<'de> de::Deserialize<'de> for WireTensor<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireTensor<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an input tensor object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireTensor<'de>, A::Error> {
                let mut t = WireTensor::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "name" => t.name = Some(map.next_value()?),
                        "datatype" => t.datatype = Some(map.next_value()?),
                        "shape" => t.shape = Some(map.next_value()?),
                        "parameters" => t.parameters = Some(map.next_value()?),
                        // Raw `data` is only checked as JSON when scanned:
                        // a replaced one never is, so the reference decides.
                        "data" if t.data.is_some() => return Err(de::Error::custom("duplicate data")),
                        "data" => t.data = Some(map.next_value()?),
                        _ => {
                            map.next_value::<Value>()?;
                        }
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

/// Nesting of `data` the one pass takes; deeper goes to the reference
/// (which refuses past serde_json's limit of 128 levels in all).
const MAX_DATA_DEPTH: usize = 64;

/// Encodes `data`'s raw JSON text as `datatype`: one scan over the text,
/// nesting flattened, each number read once where it stands. `None` for
/// anything but numbers and booleans that fit the datatype (the reference
/// then decides). The text is valid JSON: serde_json checked it, so a
/// token that starts with `-` or a digit is a JSON number.
///
/// Numbers are what serde_json (`float_roundtrip`) makes of them:
/// - for a float datatype every number is read as the correctly rounded
///   f64 (Lemire's algorithm, `fast_float2`). serde_json reads an integer
///   token as u64 or i64 and the reference converts it with `as f64`,
///   which rounds the same exact value the same way; `-0` is -0.0 to both;
/// - for the other datatypes tokens are told apart as serde_json does:
///   an integer that fits u64 (i64 when negative), `-0` and larger
///   integers as floats, anything with `.`/`e` as a float.
fn scan(raw: &str, datatype: Datatype) -> Option<Vec<u8>> {
    let b = raw.as_bytes();
    let float_type = matches!(datatype, Datatype::Fp16 | Datatype::Bf16 | Datatype::Fp32 | Datatype::Fp64);
    let mut out = Vec::with_capacity(b.len() / 4);
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        match b[i] {
            b'[' => {
                // Deeper than serde_json's recursion limit allows for a
                // request's data (128 levels in all): the reference refuses.
                depth += 1;
                if depth > MAX_DATA_DEPTH {
                    return None;
                }
                i += 1;
            }
            b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' | b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b't' => {
                encode_num(datatype, Num::B(true), &mut out).ok()?;
                i += 4;
            }
            b'f' => {
                encode_num(datatype, Num::B(false), &mut out).ok()?;
                i += 5;
            }
            b'-' | b'0'..=b'9' if float_type => {
                let (x, len) = fast_float2::parse_partial::<f64, _>(&b[i..]).ok()?;
                i += len;
                // A number too large for f64 (`1e999`) is refused by
                // serde_json ("number out of range"), so by the reference,
                // never taken as infinity.
                if !x.is_finite() {
                    return None;
                }
                encode_num(datatype, Num::F(x), &mut out).ok()?;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut float = false;
                while i < b.len() && !matches!(b[i], b',' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    float |= matches!(b[i], b'.' | b'e' | b'E');
                    i += 1;
                }
                let tok = &raw[start..i];
                let as_float = || tok.parse::<f64>().ok().filter(|x| x.is_finite()).map(Num::F);
                let n = if float {
                    as_float()?
                } else if tok.starts_with('-') {
                    match tok.parse::<i64>() {
                        // `-0` is a float to serde_json (-0.0).
                        Ok(0) => Num::F(-0.0),
                        Ok(x) => Num::I(x),
                        // Integers past 64 bits are floats to serde_json.
                        Err(_) => as_float()?,
                    }
                } else {
                    tok.parse().map_or_else(|_| as_float(), |x| Some(Num::U(x)))?
                };
                encode_num(datatype, n, &mut out).ok()?;
            }
            // Strings, objects, null: the reference's errors.
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The fast path's result, asserting it did not defer.
    fn fast_only(v: &Value) -> Request {
        fast(&serde_json::to_vec(v).unwrap(), &[]).expect("fast path").request
    }

    fn reference(v: &Value) -> Result<Request, KserveError> {
        kserve::parse_request(v)
    }

    #[test]
    fn every_numeric_type_encodes_as_the_reference_does() {
        let cases = [
            ("BOOL", json!([true, false, 0, 1])),
            ("UINT8", json!([0, 255, 7, 1])),
            ("UINT16", json!([0, 65535, 7, 1])),
            ("UINT32", json!([0, 4294967295u64, 7, 1])),
            ("UINT64", json!([0, u64::MAX, 7, 1])),
            ("INT8", json!([-128, 127, 0, -1])),
            ("INT16", json!([-32768, 32767, 0, -1])),
            ("INT32", json!([i32::MIN, i32::MAX, 0, -1])),
            ("INT64", json!([i64::MIN, i64::MAX, 0, -1])),
            ("FP16", json!([1.5, -65504.0, 0, 3])),
            ("BF16", json!([1.5, -3.0e38, 0, -2])),
            ("FP32", json!([1.4549378156661987, -0.6989426016807556, 3.4e38, -7])),
            ("FP64", json!([1.4549378156661987, -1e300, 5e-324, 12])),
            ("FP32", json!([-0.0, 0, 1e-46, 16777217])),
            ("FP64", json!([9007199254740993u64, -9223372036854775808i64, 18446744073709551615u64, -0.0])),
        ];
        for (dt, data) in cases {
            let v = json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": dt, "data": data}],
                           "parameters": {"k": 1}});
            assert_eq!(fast_only(&v), reference(&v).unwrap(), "{dt}");
            // Nested rows give the same bytes as flat data.
            let nested = data.as_array().unwrap().chunks(2).map(|c| Value::Array(c.to_vec())).collect::<Vec<_>>();
            let v = json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": dt, "data": nested}]});
            assert_eq!(fast_only(&v), reference(&v).unwrap(), "{dt} nested");
            // Data before the datatype (serde_json's sorted keys).
            let text = format!(r#"{{"inputs": [{{"data": {}, "datatype": "{dt}", "name": "x", "shape": [2, 2]}}]}}"#, data);
            let early = fast(text.as_bytes(), &[]).expect("fast path").request;
            assert_eq!(early, reference(&v).unwrap(), "{dt} data first");
        }
    }

    #[test]
    fn many_random_floats_parse_bit_for_bit_as_the_reference() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let data: Vec<f64> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as f64 / u64::MAX as f64 - 0.5) * 10f64.powi((x % 9) as i32 - 6)
            })
            .collect();
        for dt in ["FP32", "FP64", "FP16", "BF16"] {
            let v = json!({"inputs": [{"name": "x", "shape": [data.len()], "datatype": dt, "data": data}]});
            assert_eq!(fast_only(&v), reference(&v).unwrap(), "{dt}");
        }
    }

    #[test]
    fn the_reference_decides_what_the_fast_path_does_not_cover() {
        let deferred = [
            // BYTES, with the datatype first or last
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}),
            json!({"inputs": [{"data": ["hi"], "datatype": "BYTES", "name": "x", "shape": [1]}]}),
        ];
        for v in &deferred {
            let body = parse_infer_body(&serde_json::to_vec(v).unwrap(), &[]).unwrap();
            assert_eq!(body.request, reference(v).unwrap());
        }
        let bad = [
            json!([1]),
            json!({"inputs": 3}),
            json!({"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2.5]}]}),
            json!({"inputs": [{"name": "x", "shape": [2], "datatype": "UINT8", "data": [1, 256]}]}),
            json!({"inputs": [{"name": "x", "shape": [2], "datatype": "UINT8", "data": [1, -1]}]}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP16", "data": [70000]}]}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [true]}]}),
            json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [2]}]}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
                              {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            json!({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}),
            json!({"inputs": [], "parameters": {"x": [1]}}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [null]}]}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ["1"]}]}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1e3]}]}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1e20]}]}),
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]}]}),
        ];
        for v in &bad {
            let json = serde_json::to_vec(v).unwrap();
            assert!(fast(&json, &[]).is_none(), "fast path took {v}");
            let got = parse_infer_body(&json, &[]).map(|b| b.request);
            assert_eq!(got, reference(v), "{v}");
        }
        // A second `datatype`: the last one counts, as in a JSON value.
        let dup = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "datatype": "INT8"}]}"#;
        let v: Value = serde_json::from_slice(dup).unwrap();
        assert_eq!(fast(dup, &[]).expect("fast path").request, reference(&v).unwrap());
        // An integer past 64 bits is a float to serde_json: refused for
        // INT64, taken for FP32, as by the reference.
        for dt in ["INT64", "FP32"] {
            let text = format!(r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "{dt}", "data": [99999999999999999999]}}]}}"#);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(parse_infer_body(text.as_bytes(), &[]).map(|b| b.request), reference(&v), "{dt}");
        }
        // Number tokens as written (not as serde_json writes them): `-0`
        // is -0.0 to serde_json, so refused for integer types and negative
        // zero for floats; integers at and past 64 bits.
        let tokens = "[-0, 0, -9223372036854775808, -9223372036854775809, 18446744073709551615, \
                      18446744073709551616, 123456789012345678901234567890, 1E2, -1.5e-3]";
        for dt in ["FP16", "BF16", "FP32", "FP64", "INT8", "INT32", "INT64", "UINT64", "BOOL"] {
            for data in [tokens, "[-0]", "[-0, 1]", "[0, -0]"] {
                let n = data.split(',').count();
                let text = format!(r#"{{"inputs": [{{"name": "x", "shape": [{n}], "datatype": "{dt}", "data": {data}}}]}}"#);
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(parse_infer_body(text.as_bytes(), &[]).map(|b| b.request), reference(&v), "{dt} {data}");
            }
        }
        // Found by the fuzz target: what serde_json's skipping lets through
        // but its value parser refuses — invalid UTF-8 in a string of an
        // unknown key, a number out of range there, nesting past the limit.
        let cases: [&[u8]; 3] = [
            b"{\"inputs\": [{\"name\": \"x\", \"type\": \"\xffF\", \"shape\": [1], \"datatype\": \"BOOL\", \"data\": [true]}]}",
            br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [true]}], "other": 1e999}"#,
            br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [true], "other": [1e999]}]}"#,
        ];
        for text in cases {
            assert!(fast(text, &[]).is_none(), "{}", String::from_utf8_lossy(text));
            assert!(parse_infer_body(text, &[]).is_err());
        }
        // Found by the fuzz target: raw `data` the one pass never scans —
        // replaced by a later `data` or `inputs`, or next to binary data —
        // still has to be JSON a value parser accepts (here: out of range).
        let unscanned = [
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1e999], "data": [true]}]}"#,
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1e999]}], "inputs": []}"#,
            r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1e999], "parameters": {"binary_data_size": 1}}]}"#,
        ];
        for text in unscanned {
            assert!(fast(text.as_bytes(), &[7]).is_none(), "{text}");
            let err = parse_infer_body(text.as_bytes(), &[7]).unwrap_err().to_string();
            assert!(err.starts_with("request is not valid JSON"), "{text}: {err}");
        }
        // Duplicates without such numbers: the reference's answer (the
        // last key wins, as in a JSON value).
        let dup = r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1], "data": [2]}]}"#;
        let v: Value = serde_json::from_str(dup).unwrap();
        assert_eq!(parse_infer_body(dup.as_bytes(), &[]).map(|b| b.request), reference(&v));
        let deep = format!(
            r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "BOOL", "data": {}true{}}}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(fast(deep.as_bytes(), &[]).is_none());
        let err = parse_infer_body(deep.as_bytes(), &[]).unwrap_err().to_string();
        assert!(err.contains("recursion limit"), "{err}");
        // An exponent past f64's range is invalid JSON to serde_json, not
        // infinity.
        for big in ["-0.5e8104476929", "1e400", &"9".repeat(400)] {
            let text = format!(r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32", "data": [{big}]}}]}}"#);
            assert!(fast(text.as_bytes(), &[]).is_none(), "{big}");
            let err = parse_infer_body(text.as_bytes(), &[]).unwrap_err().to_string();
            assert!(err.starts_with("request is not valid JSON"), "{big}: {err}");
        }
        let err = parse_infer_body(b"{\"inputs\": [", &[]).unwrap_err().to_string();
        assert!(err.starts_with("request is not valid JSON"), "{err}");
        let many: Vec<Value> = (0..=MAX_INPUTS)
            .map(|i| json!({"name": format!("x{i}"), "shape": [1], "datatype": "FP32", "data": [1]}))
            .collect();
        let err = parse_infer_body(&serde_json::to_vec(&json!({"inputs": many})).unwrap(), &[]).unwrap_err();
        assert!(matches!(err, KserveError::TooManyInputs { .. }), "{err}");
    }

    #[test]
    fn binary_inputs_and_the_header_fields_come_through() {
        let v = json!({"id": "r1", "inputs": [
            {"name": "a", "shape": [2], "datatype": "INT8", "parameters": {"binary_data_size": 2}},
            {"name": "b", "shape": [1], "datatype": "FP32", "data": [2.5]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": true}}]});
        let json = serde_json::to_vec(&v).unwrap();
        let body = fast(&json, &[7, 9]).expect("fast path");
        assert_eq!(body.request, kserve::parse_request_with_binary(&v, &[7, 9]).unwrap());
        assert_eq!(body.header["id"], "r1");
        assert_eq!(body.header["outputs"], v["outputs"]);
        // Bytes left over, or too few: the reference's errors.
        for tail in [&[7u8, 9, 1][..], &[7u8][..]] {
            assert!(fast(&json, tail).is_none());
            assert_eq!(
                parse_infer_body(&json, tail).unwrap_err(),
                kserve::parse_request_with_binary(&v, tail).unwrap_err()
            );
        }
    }
}

#[cfg(test)]
mod timing {
    #[test]
    #[ignore = "timing aid: cargo test --release -- --ignored cnn_json_parse_time"]
    fn cnn_json_parse_time() {
        let json = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../build/models/cnn.request.json")).unwrap();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let r = crate::kserve::parse_request(&v).unwrap();
            let slow = t.elapsed();
            let t = std::time::Instant::now();
            let b = super::fast(&json, &[]).unwrap();
            let quick = t.elapsed();
            assert_eq!(b.request, r);
            eprintln!("{} bytes: value tree {slow:?}, one pass {quick:?}", json.len());
        }
    }
}
