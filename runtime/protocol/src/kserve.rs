//! KServe v2 (Open Inference Protocol) JSON encoding of requests and
//! responses.
//!
//! Tensor `data` may be flat or nested (row-major); `BYTES` elements are
//! JSON strings; `FP16`/`BF16` are JSON numbers rounded to the type.

use crate::message::{Request, Response, MAX_INPUTS};
use crate::tensor::{join_bytes_elements, split_bytes_elements, Datatype, IoTensor};
use serde_json::{json, Map, Value};

/// Why a KServe request or response could not be decoded or encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KserveError {
    /// More inputs than [`MAX_INPUTS`].
    #[error("{count} inputs; a request may carry at most {max}")]
    TooManyInputs {
        /// Inputs sent.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// Two inputs with one name.
    #[error("inputs[{index}]: a second input named '{name}'; input names must be unique")]
    DuplicateInput {
        /// Index of the second one.
        index: usize,
        /// The name.
        name: String,
    },
    /// A tensor whose bytes do not match its shape.
    #[error(transparent)]
    Tensor(#[from] crate::tensor::TensorError),
    /// Anything else that does not fit the protocol; the message says
    /// where (`inputs[2]: ...`) and what.
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for KserveError {
    fn from(m: String) -> Self {
        Self::Invalid(m)
    }
}

impl From<&str> for KserveError {
    fn from(m: &str) -> Self {
        Self::Invalid(m.to_string())
    }
}

/// Parses a KServe v2 infer request.
pub fn parse_request(v: &Value) -> Result<Request, KserveError> {
    parse_request_with_binary(v, &[])
}

/// Parses a request in Triton's binary tensor extension: `v` is the JSON
/// header, `binary` the bytes that followed it. Inputs whose `parameters`
/// carry `binary_data_size` take that many bytes from `binary`, in input
/// order; the others carry JSON `data`.
pub fn parse_request_with_binary(v: &Value, binary: &[u8]) -> Result<Request, KserveError> {
    let obj = v.as_object().ok_or("request must be a JSON object")?;
    let inputs = obj.get("inputs").and_then(Value::as_array).ok_or("request needs an \"inputs\" array")?;
    if inputs.len() > MAX_INPUTS {
        return Err(KserveError::TooManyInputs { count: inputs.len(), max: MAX_INPUTS });
    }
    let mut names = std::collections::HashSet::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        if let Some(name) = input.get("name").and_then(Value::as_str) {
            if !names.insert(name) {
                return Err(KserveError::DuplicateInput { index: i, name: name.to_string() });
            }
        }
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    let mut rest = binary;
    for (i, input) in inputs.iter().enumerate() {
        let size = input.get("parameters").and_then(|p| p.get("binary_data_size"));
        let t = match size {
            Some(size) => {
                let size = size.as_u64().ok_or_else(|| format!("inputs[{i}]: binary_data_size must be an integer"))?;
                let size = usize::try_from(size).map_err(|_| format!("inputs[{i}]: binary_data_size too large"))?;
                if size > rest.len() {
                    return Err(KserveError::Invalid(format!(
                        "inputs[{i}]: binary_data_size {size} runs past the {} binary bytes left in the body",
                        rest.len()
                    )));
                }
                let (data, tail) = rest.split_at(size);
                rest = tail;
                let (name, datatype, shape) = parse_tensor_header(input).map_err(|e| format!("inputs[{i}]: {e}"))?;
                let t = IoTensor { name, datatype, shape, data: data.to_vec() };
                t.validate().map_err(|e| format!("inputs[{i}]: {e}"))?;
                t
            }
            None => parse_tensor(input).map_err(|e| format!("inputs[{i}]: {e}"))?,
        };
        tensors.push(t);
    }
    if !rest.is_empty() {
        return Err(KserveError::Invalid(format!("{} binary bytes in the body belong to no input", rest.len())));
    }
    Ok(Request { inputs: tensors, parameters: parse_parameters(obj.get("parameters"))? })
}

/// A JSON number as a float of at most `max` magnitude: a value the type
/// cannot hold is an error, not a silent infinity.
fn out_of_range(x: f64, max: f64) -> String {
    format!("{x} is out of range for the tensor's type (largest magnitude {max})")
}

/// Decides per output name whether it goes back as binary data.
pub type BinaryChoice = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Which outputs a request wants as binary data (Triton extension): all
/// when `parameters.binary_data_output` is true, else those listed in
/// `outputs` with `parameters.binary_data` true. Also returns the requested
/// output names, if the request lists any.
pub fn output_preferences(v: &Value) -> (BinaryChoice, Option<Vec<String>>) {
    let all = v.get("parameters").and_then(|p| p.get("binary_data_output")).and_then(Value::as_bool).unwrap_or(false);
    let listed: Option<Vec<(String, bool)>> = v.get("outputs").and_then(Value::as_array).map(|outs| {
        outs.iter()
            .filter_map(|o| {
                let name = o.get("name")?.as_str()?.to_string();
                let bin = o.get("parameters").and_then(|p| p.get("binary_data")).and_then(Value::as_bool);
                Some((name, bin.unwrap_or(all)))
            })
            .collect()
    });
    let names = listed.as_ref().map(|l| l.iter().map(|(n, _)| n.clone()).collect());
    let binary: BinaryChoice = match listed {
        Some(l) => Box::new(move |n: &str| l.iter().any(|(m, b)| m == n && *b)),
        None => Box::new(move |_: &str| all),
    };
    (binary, names)
}

pub(crate) fn parse_tensor_header(v: &Value) -> Result<(String, Datatype, Vec<u64>), String> {
    let name = v.get("name").and_then(Value::as_str).ok_or("tensor needs a string \"name\"")?.to_string();
    let dt =
        v.get("datatype").and_then(Value::as_str).ok_or_else(|| format!("tensor '{name}' needs a \"datatype\""))?;
    let datatype = Datatype::parse(dt).ok_or_else(|| format!("tensor '{name}': unknown datatype '{dt}'"))?;
    let shape = v
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("tensor '{name}' needs a \"shape\" array"))?
        .iter()
        .map(|d| d.as_u64().ok_or_else(|| format!("tensor '{name}': shape entries must be non-negative integers")))
        .collect::<Result<Vec<u64>, _>>()?;
    Ok((name, datatype, shape))
}

/// Parses KServe `parameters` (an object of scalars) into string pairs.
pub fn parse_parameters(v: Option<&Value>) -> Result<Vec<(String, String)>, KserveError> {
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
        .collect::<Result<_, String>>()
        .map_err(KserveError::Invalid)
}

/// Parses one tensor object `{name, shape, datatype, data}`.
pub fn parse_tensor(v: &Value) -> Result<IoTensor, KserveError> {
    let (name, datatype, shape) = parse_tensor_header(v)?;
    let data = v.get("data").ok_or_else(|| format!("tensor '{name}' needs \"data\""))?;
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let bytes = encode_elements(datatype, &flat).map_err(|e| format!("tensor '{name}': {e}"))?;
    let t = IoTensor { name, datatype, shape, data: bytes };
    t.validate()?;
    Ok(t)
}

pub(crate) fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

pub(crate) fn encode_elements(dt: Datatype, values: &[&Value]) -> Result<Vec<u8>, String> {
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
        let n = match v {
            Value::Bool(b) => Num::B(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Num::U(u),
                (_, Some(i), _) => Num::I(i),
                (_, _, Some(f)) => Num::F(f),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        encode_num(dt, n, &mut out).map_err(|r| match r {
            Refusal::NotValid => bad(),
            Refusal::OutOfRange { x, max } => out_of_range(x, max),
        })?;
    }
    Ok(out)
}

/// One JSON number or boolean of tensor data, as a parser gave it.
#[derive(Clone, Copy)]
pub(crate) enum Num {
    U(u64),
    I(i64),
    F(f64),
    B(bool),
}

/// Why an element does not fit its datatype.
pub(crate) enum Refusal {
    /// Wrong kind of value (a float for an integer type, a negative for an
    /// unsigned one, out of an integer type's range, a bool elsewhere).
    NotValid,
    /// A float larger in magnitude than the type holds.
    OutOfRange { x: f64, max: f64 },
}

/// Appends `n` as `datatype`, little-endian: integers must be integers in
/// range, floats may be integers, BOOL takes `true`/`false`/`0`/`1`, a
/// float the type cannot hold is refused. The one place these rules live:
/// the reference decoder and the one-pass parser (`kserve_json`) both call
/// it.
pub(crate) fn encode_num(datatype: Datatype, n: Num, out: &mut Vec<u8>) -> Result<(), Refusal> {
    // A non-negative i64 is what a u64 would have been.
    let n = match n {
        Num::I(x) if x >= 0 => Num::U(x as u64),
        n => n,
    };
    let float = |x: f64, out: &mut Vec<u8>| {
        let range = |max: f64| if x.is_finite() && x.abs() > max { Err(Refusal::OutOfRange { x, max }) } else { Ok(x) };
        match datatype {
            Datatype::Fp32 => out.extend_from_slice(&(range(f64::from(f32::MAX))? as f32).to_le_bytes()),
            Datatype::Fp64 => out.extend_from_slice(&x.to_le_bytes()),
            Datatype::Fp16 => out.extend_from_slice(&half::f16::from_f64(range(65504.0)?).to_le_bytes()),
            Datatype::Bf16 => out.extend_from_slice(&half::bf16::from_f64(range(f64::from(f32::MAX))?).to_le_bytes()),
            _ => return Err(Refusal::NotValid),
        }
        Ok(())
    };
    let int = |x: i64, out: &mut Vec<u8>| {
        match datatype {
            Datatype::Int8 => out.extend_from_slice(&i8::try_from(x).map_err(|_| Refusal::NotValid)?.to_le_bytes()),
            Datatype::Int16 => out.extend_from_slice(&i16::try_from(x).map_err(|_| Refusal::NotValid)?.to_le_bytes()),
            Datatype::Int32 => out.extend_from_slice(&i32::try_from(x).map_err(|_| Refusal::NotValid)?.to_le_bytes()),
            Datatype::Int64 => out.extend_from_slice(&x.to_le_bytes()),
            _ => return Err(Refusal::NotValid),
        }
        Ok(())
    };
    match (n, datatype) {
        (Num::B(b), Datatype::Bool) => out.push(u8::from(b)),
        (Num::B(_), _) => return Err(Refusal::NotValid),
        (Num::U(x), Datatype::Bool) if x <= 1 => out.push(x as u8),
        (Num::U(x), Datatype::Uint8) => out.push(u8::try_from(x).map_err(|_| Refusal::NotValid)?),
        (Num::U(x), Datatype::Uint16) => out.extend_from_slice(&u16::try_from(x).map_err(|_| Refusal::NotValid)?.to_le_bytes()),
        (Num::U(x), Datatype::Uint32) => out.extend_from_slice(&u32::try_from(x).map_err(|_| Refusal::NotValid)?.to_le_bytes()),
        (Num::U(x), Datatype::Uint64) => out.extend_from_slice(&x.to_le_bytes()),
        (Num::U(x), Datatype::Int8 | Datatype::Int16 | Datatype::Int32 | Datatype::Int64) => {
            int(i64::try_from(x).map_err(|_| Refusal::NotValid)?, out)?;
        }
        (Num::I(x), Datatype::Int8 | Datatype::Int16 | Datatype::Int32 | Datatype::Int64) => int(x, out)?,
        (Num::U(x), _) => float(x as f64, out)?,
        (Num::I(x), _) => float(x as f64, out)?,
        (Num::F(x), _) => float(x, out)?,
    }
    Ok(())
}

/// Decodes a tensor's bytes into flat JSON values.
pub fn decode_elements(t: &IoTensor) -> Result<Vec<Value>, KserveError> {
    if t.datatype == Datatype::Bytes {
        return Ok(split_bytes_elements(&t.data).map_err(|e| KserveError::Invalid(e.to_string()))?
            .into_iter()
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect());
    }
    let size = element_size(t)?;
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
pub fn tensor_json(t: &IoTensor) -> Result<Value, KserveError> {
    Ok(json!({
        "name": t.name,
        "datatype": t.datatype.as_str(),
        "shape": t.shape,
        "data": decode_elements(t)?,
    }))
}

/// Encodes a response as a KServe v2 infer response.
pub fn response_json(r: &Response, model_name: Option<&str>) -> Result<Value, KserveError> {
    Ok(response_json_binary(r, model_name, &|_| false, None)?.0)
}

/// Encodes a response, putting the outputs for which `binary` is true after
/// the JSON as raw bytes (Triton's binary extension; their JSON entry gets
/// `parameters.binary_data_size`). `only` keeps just the named outputs.
/// Returns the JSON and the binary tail.
pub fn response_json_binary(
    r: &Response,
    model_name: Option<&str>,
    binary: &dyn Fn(&str) -> bool,
    only: Option<&[String]>,
) -> Result<(Value, Vec<u8>), KserveError> {
    let mut tail = Vec::new();
    let mut outputs = Vec::new();
    for t in &r.outputs {
        if only.is_some_and(|names| !names.contains(&t.name)) {
            continue;
        }
        if binary(&t.name) {
            outputs.push(json!({
                "name": t.name,
                "datatype": t.datatype.as_str(),
                "shape": t.shape,
                "parameters": {"binary_data_size": t.data.len()},
            }));
            tail.extend_from_slice(&t.data);
        } else {
            outputs.push(tensor_json(t)?);
        }
    }
    if let Some(names) = only {
        if let Some(missing) = names.iter().find(|n| !r.outputs.iter().any(|t| &&t.name == n)) {
            return Err(KserveError::Invalid(format!("requested output '{missing}' is not among the outputs")));
        }
    }
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
    Ok((Value::Object(obj), tail))
}

/// Writes a KServe v2 infer response as JSON straight into `out`: the
/// bytes `serde_json::to_vec` gives for [`response_json_binary`]'s value
/// with `id` and `extra` added (same keys in the same order, same numbers),
/// without a JSON value per element. `extra` joins the response's own
/// `parameters`, replacing any of the same name (the node's usage and
/// receipt). Returns the binary tail, as `response_json_binary` does.
pub fn write_response_json(
    out: &mut Vec<u8>,
    r: &Response,
    model_name: Option<&str>,
    binary: &dyn Fn(&str) -> bool,
    only: Option<&[String]>,
    id: Option<&Value>,
    extra: Option<&Map<String, Value>>,
) -> Result<Vec<u8>, KserveError> {
    if let Some(names) = only {
        if let Some(missing) = names.iter().find(|n| !r.outputs.iter().any(|t| &&t.name == n)) {
            return Err(KserveError::Invalid(format!("requested output '{missing}' is not among the outputs")));
        }
    }
    let mut outputs = Vec::with_capacity(r.outputs.len());
    let mut tail = Vec::new();
    for t in r.outputs.iter().filter(|t| only.is_none_or(|names| names.contains(&t.name))) {
        let as_binary = binary(&t.name);
        if as_binary {
            tail.extend_from_slice(&t.data);
        } else {
            check_elements(t)?;
        }
        outputs.push(OutputJson { t, binary: as_binary });
    }
    let mut parameters = std::collections::BTreeMap::new();
    for (k, v) in &r.parameters {
        parameters.insert(k.as_str(), Param::Str(v));
    }
    for (k, v) in extra.into_iter().flatten() {
        parameters.insert(k.as_str(), Param::Json(v));
    }
    // A node's parameters always make the object, as an empty one would.
    let parameters = (extra.is_some() || !parameters.is_empty()).then_some(parameters);
    let body = ResponseJson { model_name, id, outputs, parameters };
    serde_json::to_writer(out, &body).map_err(|e| KserveError::Invalid(format!("encoding the response: {e}")))?;
    Ok(tail)
}

/// What [`decode_elements`] would refuse, checked before anything is
/// written.
fn check_elements(t: &IoTensor) -> Result<(), KserveError> {
    if t.datatype == Datatype::Bytes {
        split_bytes_elements(&t.data).map_err(|e| KserveError::Invalid(e.to_string()))?;
        return Ok(());
    }
    element_size(t).map(drop)
}

/// A fixed-size tensor's element size, if its bytes are whole elements.
fn element_size(t: &IoTensor) -> Result<usize, KserveError> {
    let size = t.datatype.size().expect("fixed-size type");
    if t.data.len() % size != 0 {
        return Err(KserveError::Invalid(format!(
            "tensor '{}': {} bytes is not a whole number of {}",
            t.name,
            t.data.len(),
            t.datatype
        )));
    }
    Ok(size)
}

/// A parameter's value: the response's own (a string) or the node's (any
/// JSON value).
enum Param<'a> {
    Str(&'a str),
    Json(&'a Value),
}

/// The response object; keys in `Map`'s (sorted) order.
struct ResponseJson<'a> {
    model_name: Option<&'a str>,
    id: Option<&'a Value>,
    outputs: Vec<OutputJson<'a>>,
    parameters: Option<std::collections::BTreeMap<&'a str, Param<'a>>>,
}

impl serde::Serialize for ResponseJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        if let Some(id) = self.id {
            m.serialize_entry("id", id)?;
        }
        if let Some(n) = self.model_name {
            m.serialize_entry("model_name", n)?;
        }
        m.serialize_entry("outputs", &self.outputs)?;
        if let Some(p) = &self.parameters {
            m.serialize_entry("parameters", &Params(p))?;
        }
        m.end()
    }
}

struct Params<'a, 'b>(&'b std::collections::BTreeMap<&'a str, Param<'a>>);

impl serde::Serialize for Params<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            match v {
                Param::Str(x) => m.serialize_entry(k, x)?,
                Param::Json(x) => m.serialize_entry(k, x)?,
            }
        }
        m.end()
    }
}

/// One output: metadata, then its elements or, sent in the binary tail,
/// their byte count.
struct OutputJson<'a> {
    t: &'a IoTensor,
    binary: bool,
}

impl serde::Serialize for OutputJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let t = self.t;
        let mut m = s.serialize_map(Some(4))?;
        if !self.binary {
            m.serialize_entry("data", &Elements(t))?;
        }
        m.serialize_entry("datatype", t.datatype.as_str())?;
        m.serialize_entry("name", &t.name)?;
        if self.binary {
            m.serialize_entry("parameters", &BinarySize(t.data.len()))?;
        }
        m.serialize_entry("shape", &t.shape)?;
        m.end()
    }
}

struct BinarySize(usize);

impl serde::Serialize for BinarySize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("binary_data_size", &self.0)?;
        m.end()
    }
}

/// A tensor's elements as a flat JSON array, each written as
/// [`decode_elements`] makes it (floats through f64; NaN and infinities
/// as `null`; `BYTES` elements as strings, invalid UTF-8 replaced).
struct Elements<'a>(&'a IoTensor);

impl serde::Serialize for Elements<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let t = self.0;
        if t.datatype == Datatype::Bytes {
            let parts = split_bytes_elements(&t.data).map_err(S::Error::custom)?;
            let mut seq = s.serialize_seq(Some(parts.len()))?;
            for b in parts {
                seq.serialize_element(&String::from_utf8_lossy(b))?;
            }
            return seq.end();
        }
        let size = t.datatype.size().expect("fixed-size type");
        let mut seq = s.serialize_seq(Some(t.data.len() / size))?;
        macro_rules! each {
            ($t:ty, $f:expr) => {
                for c in t.data.chunks_exact(size) {
                    let x = <$t>::from_le_bytes(c.try_into().expect("chunk size"));
                    seq.serialize_element(&$f(x))?;
                }
            };
        }
        match t.datatype {
            Datatype::Bool => each!(u8, |x: u8| x != 0),
            Datatype::Uint8 => each!(u8, |x| x),
            Datatype::Uint16 => each!(u16, |x| x),
            Datatype::Uint32 => each!(u32, |x| x),
            Datatype::Uint64 => each!(u64, |x| x),
            Datatype::Int8 => each!(i8, |x| x),
            Datatype::Int16 => each!(i16, |x| x),
            Datatype::Int32 => each!(i32, |x| x),
            Datatype::Int64 => each!(i64, |x| x),
            Datatype::Fp16 => each!(half::f16, f64::from),
            Datatype::Bf16 => each!(half::bf16, f64::from),
            Datatype::Fp32 => each!(f32, f64::from),
            Datatype::Fp64 => each!(f64, |x| x),
            Datatype::Bytes => unreachable!("handled above"),
        }
        seq.end()
    }
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
    fn binary_inputs_and_outputs_follow_the_triton_extension() {
        let header = json!({
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [1], "datatype": "INT64", "data": [5]},
                {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 13}},
            ],
            "outputs": [{"name": "a", "parameters": {"binary_data": true}}, {"name": "b"}],
        });
        let mut bin = Vec::new();
        bin.extend(1.5f32.to_le_bytes());
        bin.extend(2.5f32.to_le_bytes());
        bin.extend(join_bytes_elements([&b"hi"[..], b"you"]));
        let req = parse_request_with_binary(&header, &bin).unwrap();
        assert_eq!(req.inputs[0].data, bin[..8]);
        assert_eq!(req.inputs[1].data, 5i64.to_le_bytes());
        assert_eq!(req.inputs[2].data, bin[8..]);
        assert!(parse_request_with_binary(&header, &bin[..10]).unwrap_err().to_string().contains("runs past"));
        let mut extra = bin.clone();
        extra.push(0);
        assert!(parse_request_with_binary(&header, &extra).unwrap_err().to_string().contains("belong to no input"));

        let (binary, only) = output_preferences(&header);
        let resp = Response { outputs: req.inputs.clone(), parameters: vec![] };
        let (v, tail) = response_json_binary(&resp, None, &*binary, only.as_deref()).unwrap();
        assert_eq!(v["outputs"].as_array().unwrap().len(), 2, "only the requested outputs");
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(v["outputs"][1]["data"], json!([5]));
        assert_eq!(tail, bin[..8]);
    }

    /// The response as the node wrote it before `write_response_json`: a
    /// value tree, `id` and the node's parameters added, then serialised.
    fn response_via_value(
        r: &Response,
        binary: &dyn Fn(&str) -> bool,
        only: Option<&[String]>,
        id: Option<&Value>,
        extra: Option<&Map<String, Value>>,
    ) -> Result<(Vec<u8>, Vec<u8>), KserveError> {
        let (mut v, tail) = response_json_binary(r, Some("m"), binary, only)?;
        if let Some(id) = id {
            v["id"] = id.clone();
        }
        if let Some(extra) = extra {
            let p = v.as_object_mut().unwrap().entry("parameters").or_insert_with(|| json!({}));
            p.as_object_mut().unwrap().extend(extra.clone());
        }
        Ok((serde_json::to_vec(&v).unwrap(), tail))
    }

    #[test]
    fn response_written_directly_is_byte_for_byte_the_value_trees() {
        // xorshift: many responses of every datatype, with special floats,
        // invalid UTF-8, binary and JSON outputs, `only`, ids, parameters.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, 1e-310, f64::MAX, 0.1, -3.5];
        for case in 0..400 {
            let mut outputs = Vec::new();
            for k in 0..(next() % 4) {
                let dt = Datatype::ALL[(next() % Datatype::ALL.len() as u64) as usize];
                let n = (next() % 6) as usize;
                let data = if dt == Datatype::Bytes {
                    let elems: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            (0..next() % 5)
                                .map(|_| [b'a', b'"', b'\\', 0xff, 0xc3, b'\n'][(next() % 6) as usize])
                                .collect()
                        })
                        .collect();
                    join_bytes_elements(elems.iter().map(|e| &e[..]))
                } else {
                    let size = dt.size().unwrap();
                    let mut d = Vec::new();
                    for _ in 0..n {
                        let x = if next() % 3 == 0 {
                            specials[(next() % specials.len() as u64) as usize]
                        } else {
                            f64::from_bits(next())
                        };
                        let bytes: Vec<u8> = match dt {
                            Datatype::Fp32 => (x as f32).to_le_bytes().to_vec(),
                            Datatype::Fp64 => x.to_le_bytes().to_vec(),
                            Datatype::Fp16 => half::f16::from_f64(x).to_le_bytes().to_vec(),
                            Datatype::Bf16 => half::bf16::from_f64(x).to_le_bytes().to_vec(),
                            _ => next().to_le_bytes()[..size].to_vec(),
                        };
                        d.extend(bytes);
                    }
                    d
                };
                outputs.push(IoTensor { name: format!("out{k}\"é"), datatype: dt, shape: vec![n as u64], data });
            }
            let parameters = (0..next() % 3).map(|i| (format!("p{i}"), format!("v\"{}", next() % 10))).collect();
            let r = Response { outputs, parameters };
            let bits = next();
            let binary = move |name: &str| name.len() as u64 % 2 == bits % 2 || bits % 5 == 0;
            let only: Option<Vec<String>> =
                (case % 4 == 0).then(|| r.outputs.iter().step_by(2).map(|t| t.name.clone()).collect());
            let id = (case % 3 == 0).then(|| json!(format!("req-{case}")));
            let extra: Option<Map<String, Value>> = (case % 2 == 0).then(|| {
                let mut m = Map::new();
                m.insert("p0".into(), json!(case));
                m.insert("mote_receipt".into(), json!("{\"signature\":\"ab\"}"));
                m
            });
            let want = response_via_value(&r, &binary, only.as_deref(), id.as_ref(), extra.as_ref()).unwrap();
            let mut out = Vec::new();
            let tail =
                write_response_json(&mut out, &r, Some("m"), &binary, only.as_deref(), id.as_ref(), extra.as_ref())
                    .unwrap();
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want.0), "case {case}");
            assert_eq!(tail, want.1, "case {case}");
        }
    }

    #[test]
    fn response_written_directly_refuses_what_the_value_tree_refuses() {
        let ragged = Response {
            outputs: vec![IoTensor { name: "x".into(), datatype: Datatype::Fp32, shape: vec![1], data: vec![0; 5] }],
            parameters: vec![],
        };
        let bad_bytes = Response {
            outputs: vec![IoTensor {
                name: "s".into(),
                datatype: Datatype::Bytes,
                shape: vec![1],
                data: vec![9, 0, 0, 0, b'a'],
            }],
            parameters: vec![],
        };
        for r in [&ragged, &bad_bytes] {
            let want = response_via_value(r, &|_| false, None, None, None).unwrap_err();
            let mut out = Vec::new();
            assert_eq!(write_response_json(&mut out, r, Some("m"), &|_| false, None, None, None).unwrap_err(), want);
            // Sent in the binary tail, the bytes are not elements and pass.
            assert!(write_response_json(&mut out, r, Some("m"), &|_| true, None, None, None).is_ok());
        }
        let only = ["nope".to_string()];
        let mut out = Vec::new();
        let err = write_response_json(&mut out, &ragged, None, &|_| true, Some(&only), None, None).unwrap_err();
        assert!(err.to_string().contains("'nope' is not among the outputs"), "{err}");
    }

    /// The tiny MLP's response (two FP32 outputs of 40) with a node's
    /// parameters, written through the value tree and directly, alternated.
    #[test]
    #[ignore = "timing aid: cargo test --release -p mote-protocol -- --ignored response_write_time"]
    fn response_write_time() {
        let out = |name: &str, k: u32| IoTensor {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: vec![4, 10],
            data: (0..40).flat_map(|i| ((i * k) as f32 / 7.3).sin().to_le_bytes()).collect(),
        };
        let r = Response { outputs: vec![out("probs", 3), out("logits", 5)], parameters: vec![] };
        let mut extra = Map::new();
        for (k, v) in [("mote_outcome", json!("ok")), ("mote_fuel", json!(5854)), ("mote_wall_ns", json!(358029))] {
            extra.insert(k.into(), v);
        }
        extra.insert(
            "mote_receipt".into(),
            json!("{\"job_id\":\"46502456b25be2b2d6ecb3fb67a71d58\",\"signature\":\"f84e7488a0a0\"}".repeat(8)),
        );
        let time = |f: &mut dyn FnMut()| {
            let mut t: Vec<_> = (0..20001)
                .map(|_| {
                    let s = std::time::Instant::now();
                    f();
                    s.elapsed()
                })
                .collect();
            t.sort();
            t[t.len() / 2].as_secs_f64() * 1e6
        };
        for _ in 0..3 {
            let tree = time(&mut || {
                _ = std::hint::black_box(response_via_value(&r, &|_| false, None, None, Some(&extra)).unwrap())
            });
            let direct = time(&mut || {
                let mut b = Vec::new();
                write_response_json(&mut b, &r, Some("m"), &|_| false, None, None, Some(&extra)).unwrap();
                std::hint::black_box(b);
            });
            eprintln!("MLP response: value tree {tree:.2} µs, direct {direct:.2} µs (p50)");
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
            let err = parse_request(&req).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    // Properties of the request parser, the node's first contact with a
    // stranger's bytes (the same run longer under `cargo fuzz`, fuzz/).
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|i| json!(i)),
                any::<f64>().prop_map(|f| json!(f)),
                "[a-z_]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::vec(
                        (prop_oneof![Just("inputs".to_string()), Just("name".to_string()), Just("shape".to_string()),
                            Just("datatype".to_string()), Just("data".to_string()), Just("parameters".to_string()),
                            Just("binary_data_size".to_string()), "[a-z]{1,4}"], inner),
                        0..6
                    )
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        fn tensor() -> impl Strategy<Value = IoTensor> {
            (prop::sample::select(Datatype::ALL.to_vec()), prop::collection::vec(0u64..4, 0..3), "[a-z]{1,6}")
                .prop_flat_map(|(dt, shape, name)| {
                    let n: u64 = shape.iter().product();
                    let len = match dt.size() {
                        Some(s) => (n as usize * s)..=(n as usize * s),
                        None => 0..=0,
                    };
                    (Just(dt), Just(shape), Just(name), prop::collection::vec(any::<u8>(), len))
                })
                .prop_filter_map("valid tensors only", |(dt, shape, name, mut data)| {
                    if dt == Datatype::Bytes {
                        let n: u64 = shape.iter().product();
                        data = join_bytes_elements((0..n).map(|_| &b"ab"[..]));
                    }
                    if dt == Datatype::Bool {
                        data.iter_mut().for_each(|b| *b &= 1);
                    }
                    let t = IoTensor { name, datatype: dt, shape, data };
                    t.validate().ok().map(|()| t)
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn parsing_any_json_and_bytes_never_panics(v in json_value(), bin in prop::collection::vec(any::<u8>(), 0..64)) {
                let _ = parse_request_with_binary(&v, &bin);
                let _ = output_preferences(&v);
            }

            #[test]
            fn the_one_pass_parser_agrees_with_the_reference_on_any_json(v in json_value()) {
                let text = serde_json::to_vec(&v).unwrap();
                let fast = crate::kserve_json::parse_infer_body(&text, &[]).map(|b| b.request);
                prop_assert_eq!(fast, parse_request(&v));
            }

            #[test]
            fn the_one_pass_parser_agrees_with_the_reference_on_valid_requests(ts in prop::collection::vec(tensor(), 0..4)) {
                let mut seen = std::collections::HashSet::new();
                let inputs: Vec<Value> =
                    ts.iter().filter(|t| seen.insert(t.name.clone())).map(|t| tensor_json(t).unwrap()).collect();
                // (Random float bytes include NaN, which JSON writes as
                // null: both parsers must refuse those alike.)
                let v = json!({"inputs": inputs});
                let body = crate::kserve_json::parse_infer_body(&serde_json::to_vec(&v).unwrap(), &[]);
                prop_assert_eq!(body.map(|b| b.request), parse_request(&v));
            }

            #[test]
            fn binary_requests_round_trip(ts in prop::collection::vec(tensor(), 0..4)) {
                let mut seen = std::collections::HashSet::new();
                let ts: Vec<IoTensor> = ts.into_iter().filter(|t| seen.insert(t.name.clone())).collect();
                let r = Response { outputs: ts.clone(), parameters: vec![] };
                let (v, tail) = response_json_binary(&r, None, &|_| true, None).unwrap();
                let req = parse_request_with_binary(&json!({"inputs": v["outputs"], "parameters": {}}), &tail).unwrap();
                prop_assert_eq!(req.inputs, ts);
            }
        }
    }
}
