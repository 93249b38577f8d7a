//! The `mote/1` frames (docs/protocol.md), sans-IO: one request frame and
//! one response frame per QUIC stream, around the same request/response
//! model as the REST API, tensors as raw bytes. The transport reads and
//! writes bytes; this module only looks at them.
//!
//! Request: `MOTE` · version u8 · deployment str16 · token str16 · header
//! length u32 · JSON header (KServe inputs with `binary_data_size`) ·
//! tensor bytes. Response: zero or more chunk frames (tag `0x10` · length
//! u32 · bytes: what the guest streamed, as it streamed it), then the final
//! frame: status u8 · header length u32 · JSON header · output bytes, up to
//! the end of the stream. Integers little-endian; str16 is a u16 length and
//! UTF-8.

use crate::kserve::{self, KserveError};
use crate::message::{Request, Response};
use serde_json::{json, Value};

/// ALPN protocol id.
pub const ALPN: &[u8] = b"mote/1";
const MAGIC: &[u8; 4] = b"MOTE";
const VERSION: u8 = 1;

/// Response status byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The job succeeded; outputs follow.
    Ok = 0,
    /// The frame or request was malformed.
    BadRequest = 1,
    /// The node is at capacity (HTTP 503).
    Busy = 2,
    /// Missing or wrong token.
    Unauthorized = 3,
    /// No such deployment.
    NotFound = 4,
    /// The job ran and failed (the header says how).
    JobFailed = 5,
    /// The node failed.
    Internal = 6,
}

impl Status {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Ok,
            1 => Self::BadRequest,
            2 => Self::Busy,
            3 => Self::Unauthorized,
            4 => Self::NotFound,
            5 => Self::JobFailed,
            6 => Self::Internal,
            _ => return None,
        })
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with `MOTE`.
    #[error("not a mote/1 frame (bad magic)")]
    BadMagic,
    /// Another protocol version.
    #[error("unsupported frame version {0}")]
    Version(u8),
    /// Fewer bytes than a field needs.
    #[error("frame truncated: wanted {wanted} more bytes, {left} left")]
    Truncated {
        /// Bytes the field needs.
        wanted: usize,
        /// Bytes left.
        left: usize,
    },
    /// A string field that is not UTF-8.
    #[error("string is not UTF-8")]
    NotUtf8,
    /// A string longer than a str16 holds.
    #[error("string longer than 65535 bytes")]
    StringTooLong,
    /// A header longer than a u32 length holds.
    #[error("header too large")]
    HeaderTooLarge,
    /// An unknown response status.
    #[error("unknown status byte {0}")]
    Status(u8),
    /// A chunk frame longer than the reader accepts.
    #[error("chunk frame of {0} bytes exceeds the reader's limit")]
    ChunkTooLarge(usize),
    /// The JSON header does not parse.
    #[error("{what} header is not valid JSON: {source}")]
    Json {
        /// `request` or `response`.
        what: &'static str,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The header and tensor bytes are not a valid KServe request/response.
    #[error(transparent)]
    Kserve(#[from] KserveError),
}

/// A decoded request frame.
#[derive(Debug, PartialEq)]
pub struct RequestFrame {
    /// The deployment asked for.
    pub deployment: String,
    /// The bearer token ("" for none).
    pub token: String,
    /// The request.
    pub request: Request,
}

fn put_str16(out: &mut Vec<u8>, s: &str) -> Result<(), FrameError> {
    let len = u16::try_from(s.len()).map_err(|_| FrameError::StringTooLong)?;
    out.extend(len.to_le_bytes());
    out.extend(s.as_bytes());
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Truncated { wanted: n, left: self.0.len() });
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }
    fn u32(&mut self) -> Result<usize, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn str16(&mut self) -> Result<String, FrameError> {
        let n = self.u16()?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| FrameError::NotUtf8)
    }
    fn magic_and_version(&mut self) -> Result<(), FrameError> {
        if self.take(4)? != MAGIC {
            return Err(FrameError::BadMagic);
        }
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(FrameError::Version(v)),
        }
    }
}

/// Encodes a request: every input as binary data.
pub fn encode_request(deployment: &str, token: &str, req: &Request) -> Result<Vec<u8>, FrameError> {
    let inputs: Vec<Value> = req
        .inputs
        .iter()
        .map(|t| {
            json!({"name": t.name, "datatype": t.datatype.as_str(), "shape": t.shape,
                   "parameters": {"binary_data_size": t.data.len()}})
        })
        .collect();
    let params: serde_json::Map<String, Value> =
        req.parameters.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let header = serde_json::to_vec(&json!({"inputs": inputs, "parameters": params, "binary_data_output": true}))
        .expect("a JSON value serialises");
    let mut out = Vec::with_capacity(header.len() + req.inputs.iter().map(|t| t.data.len()).sum::<usize>() + 64);
    out.extend(MAGIC);
    out.push(VERSION);
    put_str16(&mut out, deployment)?;
    put_str16(&mut out, token)?;
    out.extend(u32::try_from(header.len()).map_err(|_| FrameError::HeaderTooLarge)?.to_le_bytes());
    out.extend(header);
    for t in &req.inputs {
        out.extend(&t.data);
    }
    Ok(out)
}

/// Decodes a whole request frame.
pub fn decode_request(frame: &[u8]) -> Result<RequestFrame, FrameError> {
    let mut r = Reader(frame);
    r.magic_and_version()?;
    let deployment = r.str16()?;
    let token = r.str16()?;
    let n = r.u32()?;
    let header: Value =
        serde_json::from_slice(r.take(n)?).map_err(|source| FrameError::Json { what: "request", source })?;
    let request = kserve::parse_request_with_binary(&header, r.0)?;
    Ok(RequestFrame { deployment, token, request })
}

/// The first fields of a request frame: enough to authenticate and admit
/// before the rest is read.
#[derive(Debug, PartialEq, Eq)]
pub struct FramePrefix {
    /// The deployment asked for.
    pub deployment: String,
    /// The bearer token ("" for none).
    pub token: String,
}

/// Longest prefix: magic, version and two str16 fields.
pub const MAX_PREFIX_BYTES: usize = 5 + 2 * (2 + u16::MAX as usize);

/// Looks for a frame's first fields in the bytes received so far:
/// `Ok(Err(n))` when at least `n` more bytes are needed, `Ok(Ok(prefix))`
/// once they are all there (never more than [`MAX_PREFIX_BYTES`] are
/// looked at), or an error as soon as the bytes cannot start a frame.
pub fn decode_prefix(buf: &[u8]) -> Result<Result<FramePrefix, usize>, FrameError> {
    let need = |at: usize| -> Option<usize> { (buf.len() < at).then(|| at - buf.len()) };
    if let Some(n) = need(5) {
        // Check what is there already: a wrong magic fails early.
        if !MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            return Err(FrameError::BadMagic);
        }
        return Ok(Err(n));
    }
    let mut r = Reader(buf);
    r.magic_and_version()?;
    let mut at = 5;
    let mut fields = Vec::with_capacity(2);
    for _ in 0..2 {
        if let Some(n) = need(at + 2) {
            return Ok(Err(n));
        }
        let len = u16::from_le_bytes([buf[at], buf[at + 1]]) as usize;
        if let Some(n) = need(at + 2 + len) {
            return Ok(Err(n));
        }
        fields.push(String::from_utf8(buf[at + 2..at + 2 + len].to_vec()).map_err(|_| FrameError::NotUtf8)?);
        at += 2 + len;
    }
    let token = fields.pop().expect("two fields");
    let deployment = fields.pop().expect("two fields");
    Ok(Ok(FramePrefix { deployment, token }))
}

/// Tag byte of a chunk frame (never a [`Status`]).
pub const CHUNK_TAG: u8 = 0x10;

/// Encodes a chunk frame: bytes the guest streamed (`mote:edge/output`).
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(CHUNK_TAG);
    out.extend((data.len() as u32).to_le_bytes());
    out.extend(data);
    out
}

/// What the bytes at the start of a response stream hold.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponsePart {
    /// At least this many more bytes are needed to tell.
    NeedMore(usize),
    /// A whole chunk frame: its data is `buf[5..5 + len]`; the next part
    /// starts at `5 + len`.
    Chunk {
        /// Bytes of data.
        len: usize,
    },
    /// The final frame: the rest of the stream, for [`decode_response`].
    Final,
}

/// Looks at the start of the response bytes received so far, sans-IO: a
/// client feeds it its buffer, hands out chunks as they complete, and reads
/// the rest of the stream once the final frame starts. A chunk longer than
/// `max_chunk` is an error.
pub fn peek_response(buf: &[u8], max_chunk: usize) -> Result<ResponsePart, FrameError> {
    match buf.first() {
        None => Ok(ResponsePart::NeedMore(1)),
        Some(&CHUNK_TAG) => {
            if buf.len() < 5 {
                return Ok(ResponsePart::NeedMore(5 - buf.len()));
            }
            let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if len > max_chunk {
                return Err(FrameError::ChunkTooLarge(len));
            }
            match (5 + len).checked_sub(buf.len()) {
                Some(n) if n > 0 => Ok(ResponsePart::NeedMore(n)),
                _ => Ok(ResponsePart::Chunk { len }),
            }
        }
        Some(&b) => Status::from_u8(b).map(|_| ResponsePart::Final).ok_or(FrameError::Status(b)),
    }
}

/// Encodes a response frame.
pub fn encode_response(status: Status, header: &Value, tail: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("a JSON value serialises");
    let mut out = Vec::with_capacity(5 + h.len() + tail.len());
    out.push(status as u8);
    out.extend((h.len() as u32).to_le_bytes());
    out.extend(h);
    out.extend(tail);
    out
}

/// A decoded response frame.
#[derive(Debug)]
pub struct ResponseFrame {
    /// The status byte.
    pub status: Status,
    /// The JSON header: outputs' metadata, parameters, or the error.
    pub header: Value,
    /// The outputs, when the job succeeded.
    pub response: Option<Response>,
}

/// Decodes a response frame; outputs come back as a [`Response`].
pub fn decode_response(frame: &[u8]) -> Result<ResponseFrame, FrameError> {
    let mut r = Reader(frame);
    let b = r.u8()?;
    let status = Status::from_u8(b).ok_or(FrameError::Status(b))?;
    let n = r.u32()?;
    let header: Value =
        serde_json::from_slice(r.take(n)?).map_err(|source| FrameError::Json { what: "response", source })?;
    let response = if status == Status::Ok {
        // Outputs carry binary_data_size exactly like request inputs do.
        let as_req = json!({"inputs": header["outputs"], "parameters": {}});
        let parsed = kserve::parse_request_with_binary(&as_req, r.0)?;
        let parameters = kserve::parse_parameters(header.get("parameters"))?;
        Some(Response { outputs: parsed.inputs, parameters })
    } else {
        None
    };
    Ok(ResponseFrame { status, header, response })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{Datatype, IoTensor};

    fn sample() -> Request {
        Request {
            inputs: vec![
                IoTensor {
                    name: "x".into(),
                    datatype: Datatype::Fp32,
                    shape: vec![2],
                    data: vec![0, 0, 128, 63, 0, 0, 0, 64],
                },
                IoTensor {
                    name: "s".into(),
                    datatype: Datatype::Bytes,
                    shape: vec![1],
                    data: vec![2, 0, 0, 0, b'h', b'i'],
                },
            ],
            parameters: vec![("k".into(), "v".into())],
        }
    }

    #[test]
    fn request_frames_round_trip() {
        let req = sample();
        let frame = encode_request("mlp", "tok", &req).unwrap();
        let back = decode_request(&frame).unwrap();
        assert_eq!(back, RequestFrame { deployment: "mlp".into(), token: "tok".into(), request: req });
        assert!(decode_request(&frame[..frame.len() - 1]).is_err());
        assert!(matches!(decode_request(b"HTTP/1.1 200"), Err(FrameError::BadMagic)));
    }

    #[test]
    fn the_prefix_decodes_from_any_split_of_its_bytes() {
        let frame = encode_request("mlp", "tok", &sample()).unwrap();
        let full = 5 + 2 + 3 + 2 + 3;
        for at in 0..full {
            let need = decode_prefix(&frame[..at]).unwrap().unwrap_err();
            assert!(need >= 1 && at + need <= full, "at {at}: need {need}");
        }
        for at in full..frame.len() {
            let p = decode_prefix(&frame[..at]).unwrap().unwrap();
            assert_eq!(p, FramePrefix { deployment: "mlp".into(), token: "tok".into() });
        }
        assert!(matches!(decode_prefix(b"GE"), Err(FrameError::BadMagic)));
        assert!(matches!(decode_prefix(b"MOTE\x02"), Err(FrameError::Version(2))));
    }

    #[test]
    fn response_frames_round_trip() {
        let resp = Response {
            outputs: vec![IoTensor {
                name: "y".into(),
                datatype: Datatype::Int64,
                shape: vec![1],
                data: 7i64.to_le_bytes().to_vec(),
            }],
            parameters: vec![],
        };
        let (v, tail) = kserve::response_json_binary(&resp, None, &|_| true, None).unwrap();
        let frame = encode_response(Status::Ok, &v, &tail);
        let back = decode_response(&frame).unwrap();
        assert_eq!(back.status, Status::Ok);
        assert_eq!(back.response.unwrap().outputs, resp.outputs);
        let busy = decode_response(&encode_response(Status::Busy, &json!({"error": "busy"}), &[])).unwrap();
        assert_eq!((busy.status, busy.header["error"].as_str()), (Status::Busy, Some("busy")));
    }

    #[test]
    fn a_response_stream_is_chunks_then_the_final_frame_from_any_split() {
        let mut stream = encode_chunk(b"Hel");
        stream.extend(encode_chunk(b""));
        stream.extend(encode_chunk("lo, wörld".as_bytes()));
        stream.extend(encode_response(Status::Busy, &json!({"error": "x"}), &[]));
        // Read it as a client would, in pieces of every size.
        for step in 1..stream.len() {
            let (mut buf, mut fed, mut chunks) = (Vec::new(), 0, Vec::<Vec<u8>>::new());
            loop {
                match peek_response(&buf, 64).unwrap() {
                    ResponsePart::NeedMore(n) => {
                        assert!(n >= 1);
                        let take = step.min(stream.len() - fed);
                        assert!(take > 0, "stream ended mid-frame");
                        buf.extend(&stream[fed..fed + take]);
                        fed += take;
                    }
                    ResponsePart::Chunk { len } => {
                        chunks.push(buf[5..5 + len].to_vec());
                        buf.drain(..5 + len);
                    }
                    ResponsePart::Final => {
                        buf.extend(&stream[fed..]);
                        break;
                    }
                }
            }
            assert_eq!(chunks, [b"Hel".to_vec(), vec![], "lo, wörld".as_bytes().to_vec()], "step {step}");
            assert_eq!(decode_response(&buf).unwrap().status, Status::Busy);
        }
        assert!(matches!(peek_response(&encode_chunk(&[0; 65]), 64), Err(FrameError::ChunkTooLarge(65))));
        assert!(matches!(peek_response(&[0x77], 64), Err(FrameError::Status(0x77))));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            /// Any bytes, with or without a valid start: an error or a
            /// request, never a panic (the same runs longer in fuzz/).
            #[test]
            fn decoding_any_frame_never_panics(valid_start in any::<bool>(), body in prop::collection::vec(any::<u8>(), 0..256)) {
                let mut frame = if valid_start { b"MOTE\x01".to_vec() } else { Vec::new() };
                frame.extend(body);
                let _ = decode_request(&frame);
                let _ = decode_response(&frame);
                let _ = decode_prefix(&frame);
                let _ = peek_response(&frame, 1 << 20);
            }

            /// Every prefix of a valid frame is refused (a truncated frame
            /// never decodes as a different request).
            #[test]
            fn truncated_frames_are_refused(data in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
                let n = data.len() as u64;
                let req = Request {
                    inputs: vec![IoTensor { name: "x".into(), datatype: Datatype::Uint8, shape: vec![n], data }],
                    parameters: vec![],
                };
                let frame = encode_request("mlp", "token-1234", &req).unwrap();
                let at = cut.index(frame.len());
                prop_assert!(decode_request(&frame[..at]).is_err());
                prop_assert_eq!(decode_request(&frame).unwrap().request, req);
            }
        }
    }
}
