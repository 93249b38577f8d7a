//! KServe v2 (Open Inference Protocol) JSON encoding of requests and
//! responses.
//!
//! Tensor `data` may be flat or nested (row-major); `BYTES` elements are
//! JSON strings; `FP16`/`BF16` are JSON numbers rounded to the type.

use crate::runtime::{Request, Response};
use crate::tensor::{join_bytes_elements, split_bytes_elements, Datatype, IoTensor};
use serde_json::{json, Map, Value};

/// Parses a KServe v2 infer request.
pub fn parse_request(v: &Value) -> Result<Request, String> {
    let obj = v.as_object().ok_or("request must be a JSON object")?;
    let inputs = obj.get("inputs").and_then(Value::as_array).ok_or("request needs an \"inputs\" array")?;
    let mut tensors = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        tensors.push(parse_tensor(input).map_err(|e| format!("inputs[{i}]: {e}"))?);
    }
    Ok(Request { inputs: tensors, parameters: parse_parameters(obj.get("parameters"))? })
}

/// Parses KServe `parameters` (an object of scalars) into string pairs.
pub fn parse_parameters(v: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let obj = v.as_object().ok_or("\"parameters\" must be an object")?;
    obj.iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(format!("parameter '{k}' must be a string, number or boolean")),
            };
            Ok((k.clone(), s))
        })
        .collect()
}

/// Parses one tensor object `{name, shape, datatype, data}`.
pub fn parse_tensor(v: &Value) -> Result<IoTensor, String> {
    let name = v.get("name").and_then(Value::as_str).ok_or("tensor needs a string \"name\"")?.to_string();
    let dt = v.get("datatype").and_then(Value::as_str).ok_or_else(|| format!("tensor '{name}' needs a \"datatype\""))?;
    let datatype = Datatype::parse(dt).ok_or_else(|| format!("tensor '{name}': unknown datatype '{dt}'"))?;
    let shape = v
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tensor '{name}' needs a \"shape\" array"))?
        .iter()
        .map(|d| d.as_u64().ok_or_else(|| format!("tensor '{name}': shape entries must be non-negative integers")))
        .collect::<Result<Vec<u64>, _>>()?;
    let data = v.get("data").ok_or_else(|| format!("tensor '{name}' needs \"data\""))?;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let bytes = encode_elements(datatype, &flat).map_err(|e| format!("tensor '{name}': {e}"))?;
    let t = IoTensor { name, datatype, shape, data: bytes };
    t.validate()?;
    Ok(t)
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn encode_elements(dt: Datatype, values: &[&Value]) -> Result<Vec<u8>, String> {
    if dt == Datatype::Bytes {
        let elems = values
            .iter()
            .map(|v| v.as_str().map(str::as_bytes).ok_or("BYTES data must be strings"))
            .collect::<Result<Vec<&[u8]>, _>>()?;
        return Ok(join_bytes_elements(elems));
    }
    let mut out = Vec::with_capacity(values.len() * dt.size().unwrap_or(1));
    for (i, v) in values.iter().enumerate() {
        let bad = || format!("element {i} ({v}) is not a valid {dt}");
        macro_rules! int {
            ($t:ty, $get:ident) => {{
                let x = v.$get().ok_or_else(bad)?;
                out.extend(<$t>::try_from(x).map_err(|_| bad())?.to_le_bytes());
            }};
        }
        match dt {
            Datatype::Bool => {
                let b = match v {
                    Value::Bool(b) => *b,
                    Value::Number(n) if n.as_u64() == Some(0) => false,
                    Value::Number(n) if n.as_u64() == Some(1) => true,
                    _ => return Err(bad()),
                };
                out.push(u8::from(b));
            }
            Datatype::Uint8 => int!(u8, as_u64),
            Datatype::Uint16 => int!(u16, as_u64),
            Datatype::Uint32 => int!(u32, as_u64),
            Datatype::Uint64 => int!(u64, as_u64),
            Datatype::Int8 => int!(i8, as_i64),
            Datatype::Int16 => int!(i16, as_i64),
            Datatype::Int32 => int!(i32, as_i64),
            Datatype::Int64 => int!(i64, as_i64),
            Datatype::Fp16 => out.extend(half::f16::from_f64(v.as_f64().ok_or_else(bad)?).to_le_bytes()),
            Datatype::Bf16 => out.extend(half::bf16::from_f64(v.as_f64().ok_or_else(bad)?).to_le_bytes()),
            Datatype::Fp32 => out.extend((v.as_f64().ok_or_else(bad)? as f32).to_le_bytes()),
            Datatype::Fp64 => out.extend(v.as_f64().ok_or_else(bad)?.to_le_bytes()),
            Datatype::Bytes => unreachable!("handled above"),
        }
    }
    Ok(out)
}

/// Decodes a tensor's bytes into flat JSON values.
pub fn decode_elements(t: &IoTensor) -> Result<Vec<Value>, String> {
    if t.datatype == Datatype::Bytes {
        return Ok(split_bytes_elements(&t.data)?
            .into_iter()
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect());
    }
    let size = t.datatype.size().expect("fixed-size type");
    if t.data.len() % size != 0 {
        return Err(format!("tensor '{}': {} bytes is not a whole number of {}", t.name, t.data.len(), t.datatype));
    }
    Ok(t.data
        .chunks_exact(size)
        .map(|c| {
            macro_rules! le {
                ($t:ty) => {
                    <$t>::from_le_bytes(c.try_into().expect("chunk size"))
                };
            }
            match t.datatype {
                Datatype::Bool => json!(c[0] != 0),
                Datatype::Uint8 => json!(c[0]),
                Datatype::Uint16 => json!(le!(u16)),
                Datatype::Uint32 => json!(le!(u32)),
                Datatype::Uint64 => json!(le!(u64)),
                Datatype::Int8 => json!(c[0] as i8),
                Datatype::Int16 => json!(le!(i16)),
                Datatype::Int32 => json!(le!(i32)),
                Datatype::Int64 => json!(le!(i64)),
                Datatype::Fp16 => float(f64::from(half::f16::from_le_bytes([c[0], c[1]]))),
                Datatype::Bf16 => float(f64::from(half::bf16::from_le_bytes([c[0], c[1]]))),
                Datatype::Fp32 => float(f64::from(le!(f32))),
                Datatype::Fp64 => float(le!(f64)),
                Datatype::Bytes => unreachable!("handled above"),
            }
        })
        .collect())
}

/// JSON has no NaN or infinity: those become `null`.
fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// One tensor as a KServe output object.
pub fn tensor_json(t: &IoTensor) -> Result<Value, String> {
    Ok(json!({
        "name": t.name,
        "datatype": t.datatype.as_str(),
        "shape": t.shape,
        "data": decode_elements(t)?,
    }))
}

/// Encodes a response as a KServe v2 infer response.
pub fn response_json(r: &Response, model_name: Option<&str>) -> Result<Value, String> {
    let outputs = r.outputs.iter().map(tensor_json).collect::<Result<Vec<_>, _>>()?;
    let mut obj = Map::new();
    if let Some(n) = model_name {
        obj.insert("model_name".into(), n.into());
    }
    obj.insert("outputs".into(), Value::Array(outputs));
    if !r.parameters.is_empty() {
        obj.insert(
            "parameters".into(),
            Value::Object(r.parameters.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()),
        );
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_flat_data_parse_the_same() {
        let a = parse_tensor(&json!({"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]})).unwrap();
        let b = parse_tensor(&json!({"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]})).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a.data[12..], &4.5f32.to_le_bytes());
    }

    #[test]
    fn every_datatype_round_trips() {
        for dt in Datatype::ALL {
            let data = match dt {
                Datatype::Bool => json!([true, false]),
                Datatype::Bytes => json!(["hi", ""]),
                Datatype::Int8 | Datatype::Int16 | Datatype::Int32 | Datatype::Int64 => json!([-3, 7]),
                Datatype::Fp16 | Datatype::Bf16 | Datatype::Fp32 | Datatype::Fp64 => json!([1.5, -2.0]),
                _ => json!([3, 7]),
            };
            let v = json!({"name":"t","shape":[2],"datatype":dt.as_str(),"data":data});
            let t = parse_tensor(&v).unwrap_or_else(|e| panic!("{dt}: {e}"));
            let back = tensor_json(&t).unwrap();
            assert_eq!(back["data"], data, "{dt}");
        }
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let cases = [
            (json!({"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}), "needs 12 bytes, got 8"),
            (json!({"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}), "unknown datatype 'FLOAT'"),
            (json!({"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[300]}]}), "not a valid UINT8"),
            (json!({"inputs":[{"name":"x","shape":[-1],"datatype":"UINT8","data":[3]}]}), "non-negative"),
            (json!({"nope":1}), "\"inputs\" array"),
        ];
        for (req, want) in cases {
            let err = parse_request(&req).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }
}
