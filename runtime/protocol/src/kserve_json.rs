//! KServe v2 JSON infer requests parsed straight into tensor bytes, in one
//! pass over the text: the request's structure, and each input's `data`
//! read element by element into little-endian bytes as it is checked (each
//! float by Lemire's algorithm, `fast_float2`). No `serde_json::Value` per
//! element, no second walk over the numbers: a 224×224×3 FP32 image is
//! 150,528 numbers, and the text around them is checked on the way.
//!
//! The one pass covers numeric and `BYTES` data in either key order; the
//! small values of the header (`id`, `outputs`, `parameters`, a tensor's
//! `name`, `shape`, `datatype`) become `serde_json::Value`s once their
//! extent is known. Every request the pass does not take — malformed or
//! merely unusual (a scalar `data`, a duplicated `data`, nesting past
//! [`MAX_DEPTH`]) — is parsed by
//! [`crate::kserve::parse_request_with_binary`], the reference: the pass
//! either produces exactly its result or defers to it, so errors and their
//! messages are the reference's. What the pass takes must therefore be
//! JSON that serde_json's value parser takes too: UTF-8, strings without
//! control characters and with valid escapes, numbers by JSON's grammar
//! and within f64's range, nesting within serde_json's limit (the fuzz
//! target `kserve_request` holds the two to that).

use crate::kserve::{self, encode_num, KserveError, Num};
use crate::message::{Request, MAX_INPUTS};
use crate::tensor::{Datatype, IoTensor};
use serde_json::{Map, Value};
use std::borrow::Cow;

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

/// Nesting the one pass takes, the request's own levels (object, `inputs`,
/// tensor) included; deeper goes to the reference, which refuses past
/// serde_json's limit of 128 levels.
const MAX_DEPTH: usize = 100;

/// Nesting of `data` the one pass takes (within [`MAX_DEPTH`]).
const MAX_DATA_DEPTH: usize = 64;

/// The one-pass parse, or `None` where the reference must decide.
fn fast(json: &[u8], binary: &[u8]) -> Option<InferBody> {
    // serde_json's value parser refuses invalid UTF-8 in strings; checking
    // the whole text once is cheaper than string by string.
    let text = std::str::from_utf8(json).ok()?;
    let mut r = Reader { s: text, b: text.as_bytes(), i: 0 };
    let (mut id, mut inputs, mut outputs, mut parameters) = (None, None, None, None);
    r.ws();
    r.object(1, |r, key| {
        // A later duplicate key replaces the earlier one, as in a
        // `serde_json::Value` object.
        match key {
            // A second `inputs`: the reference decides.
            "inputs" if inputs.is_some() => return None,
            "inputs" => inputs = Some(r.inputs()?),
            "id" => id = Some(r.value(1)?),
            "outputs" => outputs = Some(r.value(1)?),
            "parameters" => parameters = Some(r.value(1)?),
            _ => r.skip(1)?,
        }
        Some(())
    })?;
    r.ws();
    if r.i != r.b.len() {
        return None;
    }
    let inputs = inputs?;
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
            (None, Some(d)) if datatype == Datatype::Bytes => {
                let v: Value = serde_json::from_str(&text[d.start..d.end]).ok()?;
                let mut flat = Vec::new();
                kserve::flatten(&v, &mut flat);
                kserve::encode_elements(datatype, &flat).ok()?
            }
            (None, Some(Data { read: Read::Bytes(dt, bytes), .. })) if dt == datatype => bytes,
            // Data before its float datatype (serde_json writes keys in
            // sorted order): read as f64 on the way.
            (None, Some(Data { read: Read::Floats(xs), .. })) if is_float(datatype) => {
                let mut out = Vec::with_capacity(xs.len() * datatype.size().unwrap_or(1));
                for x in xs {
                    push_float(datatype, x, &mut out)?;
                }
                out
            }
            // Data before another datatype, or a datatype replaced after
            // it: checked on the way, now encoded.
            (None, Some(d)) => {
                let mut out = Vec::with_capacity(capacity(datatype, Some(&shape), d.end - d.start));
                Reader { s: text, b: text.as_bytes(), i: d.start }.data(Sink::Bytes(datatype, &mut out), d.end)?;
                out
            }
            // Binary data and `data` both: the reference decides.
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
    let parameters_list = kserve::parse_parameters(parameters.as_ref()).ok()?;
    let mut header = Map::new();
    for (key, v) in [("id", id), ("outputs", outputs), ("parameters", parameters)] {
        if let Some(v) = v {
            header.insert(key.into(), v);
        }
    }
    Some(InferBody { request: Request { inputs: tensors, parameters: parameters_list }, header: Value::Object(header) })
}

/// One input tensor's members as read.
#[derive(Default)]
struct WireTensor {
    name: Option<Value>,
    datatype: Option<Value>,
    shape: Option<Value>,
    parameters: Option<Value>,
    data: Option<Data>,
}

/// Where an input's `data` stands in the text, and what was made of it
/// as it was read.
struct Data {
    start: usize,
    end: usize,
    read: Read,
}

/// What reading a tensor's `data` made of it.
enum Read {
    /// Its bytes, encoded as the datatype known then.
    Bytes(Datatype, Vec<u8>),
    /// Its numbers as f64, the datatype not yet known: a float datatype's
    /// elements (most requests' datatype).
    Floats(Vec<f64>),
    /// Checked only (strings, booleans).
    Checked,
}

/// Where a walk over `data` puts its elements.
enum Sink<'v> {
    /// Nowhere: the data is only checked (strings allowed).
    Check,
    /// Encoded as the datatype, little-endian.
    Bytes(Datatype, &'v mut Vec<u8>),
    /// As f64, every number (a boolean or a string stops the walk).
    Floats(&'v mut Vec<f64>),
}

/// Whether `dt` is a float datatype: its elements are every number read as
/// the correctly rounded f64.
fn is_float(dt: Datatype) -> bool {
    matches!(dt, Datatype::Fp16 | Datatype::Bf16 | Datatype::Fp32 | Datatype::Fp64)
}

/// Appends `x` as the float datatype `dt`; `None` where it does not fit.
fn push_float(dt: Datatype, x: f64, out: &mut Vec<u8>) -> Option<()> {
    match dt {
        // The common case, without `encode_num`'s dispatch.
        Datatype::Fp32 if x.abs() <= f64::from(f32::MAX) => out.extend_from_slice(&(x as f32).to_le_bytes()),
        _ => encode_num(dt, Num::F(x), out).ok()?,
    }
    Some(())
}

/// Room for a tensor's bytes: its shape's size where known, but never
/// more than `text_len` bytes of JSON could hold (an element takes at
/// least two: a digit and a comma), so a hostile shape reserves nothing
/// its text does not back.
fn capacity(datatype: Datatype, shape: Option<&[u64]>, text_len: usize) -> usize {
    let size = datatype.size().unwrap_or(1);
    let most = (text_len / 2 + 1).saturating_mul(size);
    let elements = shape.and_then(|s| s.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?)));
    match elements.and_then(|n| n.checked_mul(size)) {
        Some(bytes) => bytes.min(most),
        None => text_len / 4,
    }
}

/// A cursor over the request's text.
struct Reader<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// An object at nesting `level`, each member's value read by `member`
    /// (which gets the key, escapes decoded).
    fn object(&mut self, level: usize, mut member: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        self.sequence(level, b'{', b'}', |r| {
            let key = r.string()?;
            r.ws();
            r.eat(b':')?;
            r.ws();
            member(r, &key)
        })
    }

    /// An array at nesting `level`, each element read by `element`.
    fn array(&mut self, level: usize, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.sequence(level, b'[', b']', element)
    }

    /// `open`, items read by `item` and separated by commas, `close`: an
    /// object or an array at nesting `level`.
    fn sequence(&mut self, level: usize, open: u8, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if level > MAX_DEPTH {
            return None;
        }
        self.eat(open)?;
        self.ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
            self.ws();
        }
    }

    /// A string, escapes decoded (by serde_json, where there are any).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i;
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            match *self.b.get(self.i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                // Control characters must be escaped.
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        let s = &self.s[start..self.i];
        if escaped {
            serde_json::from_str(s).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&s[1..s.len() - 1]))
        }
    }

    /// A number token by JSON's grammar (no `+`, no leading zeros, digits
    /// on both sides of `.`): its text, and how it is written.
    fn number(&mut self) -> Option<(&'a str, Written)> {
        let (b, start) = (self.b, self.i);
        let mut i = integer_end(b, start)?;
        let mut written = Written::Integer;
        if b.get(i) == Some(&b'.') {
            let end = digits(b, i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
            written = Written::Fraction;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let end = digits(b, i);
            if end == i {
                return None;
            }
            i = end;
            written = Written::Exponent;
        }
        self.i = i;
        Some((&self.s[start..i], written))
    }

    /// A number token read as the correctly rounded f64 (`fast_float2`,
    /// which finds the token's end as it reads); `None` where JSON's
    /// grammar or f64's range refuse it. `fast_float2` takes a superset of
    /// JSON's numbers; what JSON does not allow is ruled out here (a
    /// sign other than a leading `-`, and `inf`/`nan` after it; leading
    /// zeros; a `.` without digits after it) or stops its reading early,
    /// so that the next byte is not one a number may be followed by (an
    /// `e` without exponent digits, a second `.`).
    fn float(&mut self) -> Option<f64> {
        let (b, start) = (self.b, self.i);
        let end = integer_end(b, start)?;
        if b.get(end) == Some(&b'.') && !b.get(end + 1).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let (x, len) = fast_float2::parse_partial::<f64, _>(&b[start..]).ok()?;
        self.i = start + len;
        // A number too large for f64 (`1e999`) is refused by serde_json
        // ("number out of range"), never taken as infinity.
        x.is_finite().then_some(x)
    }

    /// A literal (`true`, `false`, `null`).
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..].starts_with(word).then(|| self.i += word.len())
    }

    /// Any value, checked and passed over; `depth` is how many arrays and
    /// objects hold it.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(depth + 1, |r, _| r.skip(depth + 1)),
            b'[' => self.array(depth + 1, |r| r.skip(depth + 1)),
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => {
                let (tok, written) = self.number()?;
                in_range(tok, written).then_some(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    /// Any value as a `serde_json::Value` (for the header's small ones).
    fn value(&mut self, depth: usize) -> Option<Value> {
        let start = self.i;
        self.skip(depth)?;
        serde_json::from_str(&self.s[start..self.i]).ok()
    }

    /// The `inputs` array, refused past [`MAX_INPUTS`] as soon as it is
    /// seen.
    fn inputs(&mut self) -> Option<Vec<WireTensor>> {
        let mut out = Vec::new();
        self.array(2, |r| {
            if out.len() == MAX_INPUTS {
                return None;
            }
            out.push(r.tensor()?);
            Some(())
        })?;
        Some(out)
    }

    /// One input tensor object; its `data` encoded as it is read when the
    /// datatype came first and is numeric.
    fn tensor(&mut self) -> Option<WireTensor> {
        let mut t = WireTensor::default();
        self.object(3, |r, key| {
            match key {
                "name" => t.name = Some(r.value(3)?),
                "datatype" => t.datatype = Some(r.value(3)?),
                "shape" => t.shape = Some(r.value(3)?),
                "parameters" => t.parameters = Some(r.value(3)?),
                // A replaced `data` is never encoded: the reference decides.
                "data" if t.data.is_some() => return None,
                "data" => {
                    let start = r.i;
                    let datatype = t.datatype.as_ref().and_then(Value::as_str).and_then(Datatype::parse);
                    // Vectors are sized by the data's own text, never by
                    // what follows it (other inputs' data).
                    let read = match datatype {
                        Some(Datatype::Bytes) => {
                            r.data(Sink::Check, 0)?;
                            Read::Checked
                        }
                        Some(dt) => {
                            let end = data_end(r.b, start)?;
                            let shape = t.shape.as_ref().and_then(Value::as_array).and_then(|s| {
                                s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>()
                            });
                            let mut out = Vec::with_capacity(capacity(dt, shape.as_deref(), end - start));
                            r.data(Sink::Bytes(dt, &mut out), end)?;
                            Read::Bytes(dt, out)
                        }
                        // Not known yet: read as floats, or, at the first
                        // boolean or string, only checked.
                        None => {
                            let mut xs = Vec::new();
                            let floats = data_end(r.b, start).and_then(|end| {
                                xs.reserve_exact((end - start) / 8);
                                r.data(Sink::Floats(&mut xs), end)
                            });
                            if floats.is_some() {
                                Read::Floats(xs)
                            } else {
                                r.i = start;
                                r.data(Sink::Check, 0)?;
                                Read::Checked
                            }
                        }
                    };
                    t.data = Some(Data { start, end: r.i, read });
                }
                _ => r.skip(3)?,
            }
            Some(())
        })?;
        Some(t)
    }

    /// A tensor's `data`: an array, nested at most [`MAX_DATA_DEPTH`]
    /// deep, of numbers and booleans (and, when only checked, strings),
    /// each element put in `sink` as serde_json (`float_roundtrip`) and
    /// the reference would read it:
    /// - for a float datatype every number is the correctly rounded f64
    ///   (Lemire's algorithm, `fast_float2`). serde_json reads an integer
    ///   token as u64 or i64 and the reference converts it with `as f64`,
    ///   which rounds the same exact value the same way; `-0` is -0.0 to
    ///   both;
    /// - for the other datatypes tokens are told apart as serde_json does:
    ///   an integer that fits u64 (i64 when negative), `-0` and larger
    ///   integers as floats, anything with `.`/`e` as a float.
    ///
    /// Anything else (`null`, objects, a string to encode, an element the
    /// datatype cannot hold) is the reference's to refuse.
    ///
    /// Data read into bytes or floats must end at `end` (its
    /// [`data_end`], which sized the vector); large data is read in parts,
    /// one thread each (see [`parts`]).
    fn data(&mut self, sink: Sink<'_>, end: usize) -> Option<()> {
        if self.peek()? != b'[' {
            return None;
        }
        match sink {
            Sink::Check => self.walk(&mut Sink::Check, None).map(drop),
            Sink::Bytes(dt, out) => self.in_parts(out, end, move |v| Sink::Bytes(dt, v)),
            Sink::Floats(xs) => self.in_parts(xs, end, |v| Sink::Floats(v)),
        }
    }

    /// Walks `data` (to `end`) into `out`, through the sink `to` makes of a
    /// vector, in parts on several threads where it is large, each part's
    /// elements appended in order.
    fn in_parts<T: Copy + Send>(
        &mut self,
        out: &mut Vec<T>,
        end: usize,
        to: impl for<'v> Fn(&'v mut Vec<T>) -> Sink<'v> + Sync,
    ) -> Option<()> {
        let Some(bounds) = parts(self.b, self.i, end) else {
            self.walk(&mut to(out), None)?;
            return (self.i == end).then_some(());
        };
        let (s, b, to) = (self.s, self.b, &to);
        // Part `j` runs from `bounds[j]` to the comma before the next one,
        // the last to `end`.
        let stop = |j: usize| bounds.get(j + 1).map_or(end, |&next| next - 1);
        let each = out.capacity() / bounds.len() + 64;
        std::thread::scope(|scope| {
            let rest: Vec<_> = (1..bounds.len())
                .map(|j| {
                    let (from, until) = (bounds[j], stop(j));
                    scope.spawn(move || {
                        let mut v = Vec::with_capacity(each);
                        let w = Reader { s, b, i: from }.walk(&mut to(&mut v), Some(until))?;
                        Some((w, v))
                    })
                })
                .collect();
            let first = Reader { s, b, i: bounds[0] }.walk(&mut to(out), Some(stop(0)));
            let mut depth = 0isize;
            let mut ok = first.is_some_and(|w| {
                depth = w.depth;
                w.lowest >= 1
            });
            let last = rest.len();
            for (j, h) in rest.into_iter().enumerate() {
                let part = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                let Some((w, v)) = part.filter(|_| ok) else {
                    ok = false;
                    continue;
                };
                // Depths are relative to where a part starts. Absolute,
                // the data stays open until its last part's final `]`, and
                // within bounds.
                let floor = if j + 1 == last { 0 } else { 1 };
                ok = depth + w.deepest <= MAX_DATA_DEPTH as isize && depth.saturating_add(w.lowest) >= floor;
                depth += w.depth;
                out.extend_from_slice(&v);
            }
            (ok && depth == 0).then_some(())
        })?;
        self.i = end;
        Some(())
    }

    /// Walks `data` from `self.i`: the whole array (`until` `None`: from its
    /// `[` to its `]`), or a part of it (from just after a comma, or from
    /// the `[`, to `until`, the next part's comma or the data's end).
    /// Depths are counted from where the walk starts.
    fn walk(&mut self, sink: &mut Sink<'_>, until: Option<usize>) -> Option<Walk> {
        let mut w = Walk { depth: 0, lowest: isize::MAX, deepest: 0 };
        // After `[` or `,`: a value is next (or, right after `[`, `]`).
        let mut value_next = true;
        let mut empty_ok = false;
        loop {
            if let Some(until) = until {
                // The last part ends on the data's `]`, the others on a
                // comma (after whitespace).
                if !value_next && self.i == until {
                    return Some(w);
                }
                self.ws();
                if !value_next && self.i == until {
                    return Some(w);
                }
                if self.i > until {
                    return None;
                }
            } else {
                self.ws();
            }
            let c = self.peek()?;
            if !value_next {
                self.i += 1;
                match c {
                    b',' => {
                        value_next = true;
                        empty_ok = false;
                    }
                    b']' => {
                        if w.close() && until.is_none() {
                            return Some(w);
                        }
                    }
                    _ => return None,
                }
                continue;
            }
            match c {
                b'[' => {
                    w.depth += 1;
                    w.deepest = w.deepest.max(w.depth);
                    if w.depth > MAX_DATA_DEPTH as isize {
                        return None;
                    }
                    self.i += 1;
                    empty_ok = true;
                    continue;
                }
                b']' if empty_ok => {
                    self.i += 1;
                    if w.close() && until.is_none() {
                        return Some(w);
                    }
                }
                b'-' | b'0'..=b'9' => match sink {
                    Sink::Floats(xs) => xs.push(self.float()?),
                    Sink::Bytes(dt, out) if is_float(*dt) => push_float(*dt, self.float()?, out)?,
                    Sink::Bytes(dt, out) => {
                        let (tok, written) = self.number()?;
                        let n = if written == Written::Integer {
                            integer(tok)?
                        } else {
                            // A number too large for f64 (`1e999`) is
                            // refused by serde_json ("number out of
                            // range"), never taken as infinity.
                            Num::F(fast_float2::parse::<f64, _>(tok).ok().filter(|x| x.is_finite())?)
                        };
                        encode_num(*dt, n, out).ok()?;
                    }
                    Sink::Check => {
                        let (tok, written) = self.number()?;
                        if !in_range(tok, written) {
                            return None;
                        }
                    }
                },
                b't' | b'f' => {
                    let b = c == b't';
                    self.literal(if b { b"true" } else { b"false" })?;
                    match sink {
                        Sink::Bytes(dt, out) => encode_num(*dt, Num::B(b), out).ok()?,
                        Sink::Floats(_) => return None,
                        Sink::Check => {}
                    }
                }
                b'"' if matches!(sink, Sink::Check) => _ = self.string()?,
                _ => return None,
            }
            value_next = false;
        }
    }
}

/// What a walk over (part of) `data` saw, depths counted from where it
/// started.
#[derive(Clone, Copy)]
struct Walk {
    /// Where it ended.
    depth: isize,
    /// The lowest depth a `]` left it at.
    lowest: isize,
    /// The deepest it went.
    deepest: isize,
}

impl Walk {
    /// A `]`: whether it closed the array the walk started in.
    fn close(&mut self) -> bool {
        self.depth -= 1;
        self.lowest = self.lowest.min(self.depth);
        self.depth == 0
    }
}

/// Text of `data` per thread below which it is read on one.
const PART_MIN_BYTES: usize = 256 << 10;

/// Where `data` whose `[` is at `start` ends: just after the `]` where its
/// brackets first balance (`None` if they never do). Only for data read
/// into bytes or floats: its text holds no strings (the walk refuses
/// them), so every bracket is the array's.
fn data_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    memchr::memchr2_iter(b'[', b']', &b[start..]).find_map(|p| {
        if b[start + p] == b'[' {
            depth += 1;
        } else {
            depth = depth.saturating_sub(1);
        }
        (depth == 0).then_some(start + p + 1)
    })
}

/// Splits large `data` (from `start` to `end`, see [`data_end`]) into
/// parts for as many threads as the machine runs at once (at most four):
/// each part starts at `start` or just after a comma. `None` for data too
/// small to share or with no commas to split at.
fn parts(b: &[u8], start: usize, end: usize) -> Option<Vec<usize>> {
    #[cfg(not(test))]
    let (forced, min) = (None::<usize>, PART_MIN_BYTES);
    #[cfg(test)]
    let (forced, min) = tests::PARTS.get().map_or((None, PART_MIN_BYTES), |(t, m)| (Some(t), m));
    if end - start < 2 * min {
        return None;
    }
    // Asked once: std reads the process's cgroup quota files for it, tens
    // of µs that a small request must not pay.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads = forced
        .unwrap_or_else(|| *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from).min(4)));
    if threads < 2 {
        return None;
    }
    let n = ((end - start) / min).min(threads);
    if n < 2 {
        return None;
    }
    let mut bounds = vec![start];
    for j in 1..n {
        let at = (start + (end - start) * j / n).max(*bounds.last()?);
        let comma = at + memchr::memchr(b',', &b[at..end])?;
        bounds.push(comma + 1);
    }
    Some(bounds)
}

/// An integer token as serde_json reads it: u64, else i64 when negative,
/// `-0` and integers past 64 bits as floats (`None` past f64's range).
fn integer(tok: &str) -> Option<Num> {
    let as_float = || fast_float2::parse::<f64, _>(tok).ok().filter(|x| x.is_finite()).map(Num::F);
    if tok.starts_with('-') {
        match tok.parse::<i64>() {
            // `-0` is a float to serde_json (-0.0).
            Ok(0) => Some(Num::F(-0.0)),
            Ok(x) => Some(Num::I(x)),
            Err(_) => as_float(),
        }
    } else {
        tok.parse().map_or_else(|_| as_float(), |x| Some(Num::U(x)))
    }
}

/// Where a number's integer part, starting at `start`, ends: an optional
/// `-`, then at least one digit and no leading zero (JSON's grammar).
fn integer_end(b: &[u8], start: usize) -> Option<usize> {
    let i = start + usize::from(b.get(start) == Some(&b'-'));
    let end = digits(b, i);
    (end > i && (end - i == 1 || b[i] != b'0')).then_some(end)
}

/// Where the run of ASCII digits that starts at `i` ends: eight bytes at
/// a time (a number's digits are read here once, then by `fast_float2`).
fn digits(b: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes")) ^ 0x3030_3030_3030_3030;
        // A byte's top bit set where it is not a digit: digits are now
        // 0..=9; the low seven bits plus 118 reach 128 from 10 up (no carry
        // between bytes), and a top bit already set stays.
        let other = (((x & 0x7f7f_7f7f_7f7f_7f7f) + 0x7676_7676_7676_7676) | x) & 0x8080_8080_8080_8080;
        if other != 0 {
            return i + (other.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// How a number token is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Written {
    Integer,
    Fraction,
    /// With an exponent (and maybe a fraction).
    Exponent,
}

/// Whether serde_json takes a number token: every token within f64's
/// range (`1e999` is "number out of range"). One without an exponent and
/// under 300 characters always is; the others are read to see.
fn in_range(tok: &str, written: Written) -> bool {
    (written != Written::Exponent && tok.len() < 300) || fast_float2::parse::<f64, _>(tok).is_ok_and(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    thread_local! {
        /// Threads and bytes per part for [`parts`] on this test's thread.
        pub(super) static PARTS: std::cell::Cell<Option<(usize, usize)>> = const { std::cell::Cell::new(None) };
    }

    /// The fast path's result, asserting it did not defer.
    fn fast_only(v: &Value) -> Request {
        fast(&serde_json::to_vec(v).unwrap(), &[]).expect("fast path").request
    }

    fn reference(v: &Value) -> Result<Request, KserveError> {
        kserve::parse_request(v)
    }

    /// The eight-at-a-time digit run agrees with a byte-by-byte one, for
    /// every byte value at every position of a word and past its end.
    #[test]
    fn digit_runs_end_where_the_digits_do() {
        let naive = |b: &[u8], i: usize| i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        for c in 0..=255u8 {
            for at in 0..20 {
                for len in at..20 {
                    let mut b = vec![b'7'; len];
                    if at < len {
                        b[at] = c;
                    }
                    for i in 0..=len.min(3) {
                        assert_eq!(digits(&b, i), naive(&b, i), "{c} at {at} of {len} from {i}");
                    }
                }
            }
        }
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

    /// The one pass checks the JSON itself: whatever serde_json's value
    /// parser refuses, it refuses (and the reference's error is the
    /// answer), in `data`, in the header's values and around them.
    #[test]
    fn json_serde_json_refuses_is_refused() {
        let ok = r#"{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -2]}]}"#;
        assert!(fast(ok.as_bytes(), &[]).is_some());
        let data = [
            "[01, 2]", "[1., 2]", "[.5, 2]", "[+1, 2]", "[-, 2]", "[1e, 2]", "[1e+, 2]", "[1 2]", "[1, 2,]",
            "[1,, 2]", "[[1, 2]", "[1, 2]]", "[1, tru]", "[1, nan]", "[1, -inf]", "[1, Infinity]", "[0x1, 2]",
            "[1, 2", "[1, 2.5.5]", "[1, 2e5e5]", "[1, -01]", "[1,\u{b}2]", "[1, 2] 3",
        ];
        let header = [
            r#""id": 01"#, r#""id": "a\x""#, "\"id\": \"a\u{1}\"", r#""id": "\ud800""#, r#""id": [1,]"#,
            r#""id": {"a" 1}"#, r#""id": {"a": 1,}"#, r#""id": {1: 1}"#, r#""id": nul"#, r#""id": 'a'"#,
            r#""parameters": {"k": 1e999}"#, r#""other": [1e400]"#, r#""other": -"#, r#""other": "\u12""#,
        ];
        let mut cases: Vec<String> = data
            .iter()
            .map(|d| format!(r#"{{"inputs": [{{"name": "x", "shape": [2], "datatype": "FP32", "data": {d}}}]}}"#))
            .collect();
        // The same data before its datatype: checked without encoding.
        cases.extend(data.iter().map(|d| {
            format!(r#"{{"inputs": [{{"data": {d}, "name": "x", "shape": [2], "datatype": "FP32"}}]}}"#)
        }));
        cases.extend(header.iter().map(|h| format!("{{{h}, {}", &ok[1..])));
        cases.extend([
            format!("{ok} x"),
            format!("{ok},"),
            ok.replace("\"name\"", "\"name\"\u{0}"),
            ok.replace("\"x\"", "\"x\u{1f}\""),
            ok.replace(": [", ":["),
            ok.replace("]}]}", "]}],}"),
            ok.replace("\"shape\"", "shape"),
        ]);
        for text in &cases {
            if serde_json::from_str::<Value>(text).is_err() {
                assert!(fast(text.as_bytes(), &[]).is_none(), "one pass took {text}");
                let err = parse_infer_body(text.as_bytes(), &[]).unwrap_err().to_string();
                assert!(err.starts_with("request is not valid JSON"), "{text}: {err}");
            } else {
                // JSON after all (`: [` → `:[`): the reference's answer.
                let v: Value = serde_json::from_str(text).unwrap();
                assert_eq!(parse_infer_body(text.as_bytes(), &[]).map(|b| b.request), reference(&v), "{text}");
            }
        }
        // Escapes decoded, whitespace of every kind, keys in any order.
        let text = "{\"in\\u0070uts\":\t[ {\r\n\"shape\" : [ 2 ] , \"data\" : [ [ 1 ] ,[ 2e-1 ] ] ,\
                    \"name\":\"\\u00e9\\n\",\"datatype\":\"FP64\"} ],\"id\":\"a\\\"b\"} ";
        let v: Value = serde_json::from_str(text).unwrap();
        let body = fast(text.as_bytes(), &[]).expect("fast path");
        assert_eq!(body.request, reference(&v).unwrap());
        assert_eq!(body.header["id"], "a\"b");
    }

    /// Data read in parts on several threads gives what one walk gives,
    /// and refuses what serde_json refuses, wherever a part boundary falls:
    /// random nested data, then the same text with one byte changed.
    #[test]
    fn data_read_in_parts_agrees_with_one_walk_and_the_reference() {
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut checked = (0, 0);
        for case in 0..400 {
            // A random nesting: rows of rows, sometimes empty, with
            // numbers of every spelling and random whitespace.
            let mut text = String::new();
            let mut count = 0;
            fn fill(text: &mut String, count: &mut usize, depth: u32, rand: &mut dyn FnMut(u64) -> u64) {
                text.push('[');
                let n = if depth < 3 { rand(5) } else { rand(40) };
                for i in 0..n {
                    if i > 0 {
                        text.push_str([",", ", ", " ,\n", ","][rand(4) as usize]);
                    }
                    if depth < 3 && rand(3) > 0 {
                        fill(text, count, depth + 1, rand);
                    } else {
                        let v = [
                            "0", "-0", "1", "-17", "2.5", "-0.125", "1e3", "3E-2", "-7.25e+1", "123456789012",
                            "0.30000000000000004",
                        ];
                        text.push_str(v[rand(v.len() as u64) as usize]);
                        *count += 1;
                    }
                }
                text.push(']');
            }
            fill(&mut text, &mut count, 0, &mut rand);
            let dt = ["FP32", "FP64", "INT64", "FP16"][case % 4];
            // The datatype before `data` (read into bytes) and after it
            // (read as floats, or checked and read again).
            let doc = |data: &str| match case % 3 {
                0 => format!(r#"{{"inputs": [{{"data": {data}, "datatype": "{dt}", "name": "x", "shape": [{count}]}}]}}"#),
                _ => format!(r#"{{"inputs": [{{"name": "x", "shape": [{count}], "datatype": "{dt}", "data": {data}}}]}}"#),
            };
            let whole = doc(&text);
            for threads in [2, 3, 4] {
                PARTS.set(Some((threads, 16)));
                let mut texts = vec![whole.clone()];
                // One byte changed, somewhere in the data.
                for _ in 0..4 {
                    let mut b = text.clone().into_bytes();
                    let at = rand(b.len() as u64) as usize;
                    b[at] = b"[], x.-e\"0"[rand(10) as usize];
                    texts.push(doc(std::str::from_utf8(&b).unwrap()));
                }
                for t in &texts {
                    let parted = fast(t.as_bytes(), &[]).map(|b| b.request);
                    PARTS.set(Some((1, usize::MAX / 4)));
                    let one = fast(t.as_bytes(), &[]).map(|b| b.request);
                    PARTS.set(Some((threads, 16)));
                    assert_eq!(parted, one, "{threads} threads: {t}");
                    match serde_json::from_str::<Value>(t) {
                        Ok(v) => {
                            if let Ok(r) = reference(&v) {
                                checked.0 += 1;
                                assert_eq!(parse_infer_body(t.as_bytes(), &[]).unwrap().request, r, "{t}");
                            }
                        }
                        Err(_) => {
                            checked.1 += 1;
                            assert!(parted.is_none(), "took what serde_json refuses: {t}");
                        }
                    }
                }
            }
            PARTS.set(None);
        }
        // Both kinds of case were met, many times.
        assert!(checked.0 > 500 && checked.1 > 500, "{checked:?}");
    }

    /// A tensor's bytes are sized by its own `data`, never by the text
    /// after it: a request of many inputs must not reserve the rest of
    /// the body once per input.
    #[test]
    fn a_tensor_reserves_by_its_own_data() {
        let big = vec!["0.5"; 1 << 18].join(",");
        let text = format!(
            r#"{{"inputs": [{{"name": "a", "datatype": "FP32", "data": [1], "shape": [1]}},
                            {{"name": "b", "data": [2], "datatype": "FP64", "shape": [1]}},
                            {{"name": "c", "datatype": "FP32", "shape": [{}], "data": [{big}]}}]}}"#,
            1 << 18
        );
        let body = fast(text.as_bytes(), &[]).expect("fast path");
        let [a, b, c] = &body.request.inputs[..] else { panic!("three inputs") };
        assert!(a.data.capacity() < 64 && b.data.capacity() < 64, "{} {}", a.data.capacity(), b.data.capacity());
        assert_eq!(c.data.len(), 4 << 18);
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
    /// Median and fastest of `n` timed calls, in ms.
    fn times(n: usize, mut f: impl FnMut()) -> (f64, f64) {
        let mut t: Vec<f64> = (0..n)
            .map(|_| {
                let start = std::time::Instant::now();
                f();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        (t[n / 2], t[0])
    }

    /// The CNN's request (or `MOTE_JSON_REQUEST`'s file): the value tree
    /// and the one pass, alternated, 15 calls each (2001 for requests under
    /// 64 KiB).
    #[test]
    #[ignore = "timing aid: cargo test --release -- --ignored cnn_json_parse_time"]
    fn cnn_json_parse_time() {
        let path = std::env::var("MOTE_JSON_REQUEST")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../build/models/cnn.request.json").into());
        let json = std::fs::read(path).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(super::fast(&json, &[]).unwrap().request, crate::kserve::parse_request(&v).unwrap());
        let n = if json.len() < 64 << 10 { 2001 } else { 15 };
        for _ in 0..2 {
            let (tree, tree_min) = times(n, || {
                let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
                crate::kserve::parse_request(&v).unwrap();
            });
            let (pass, pass_min) = times(n, || _ = super::fast(&json, &[]).unwrap());
            eprintln!(
                "{} bytes: value tree {:.1} µs (fastest {:.1}), one pass {:.1} µs (fastest {:.1})",
                json.len(),
                tree * 1e3,
                tree_min * 1e3,
                pass * 1e3,
                pass_min * 1e3
            );
        }
    }
}
