//! A chat guest **(contract: docs/llm.md)**: an OpenAI-style request in, text
//! out, streamed token by token.
//!
//! Input: one `BYTES` tensor `request` holding a JSON object with either
//! `messages` (chat: rendered with the model's ChatML template) or `prompt`
//! (plain completion), and the sampling fields `max_tokens`, `temperature`,
//! `top_k`, `top_p`, `seed`, `stop` (string or list), `repetition_penalty`,
//! `ignore_eos`.
//! The model is the deployment's `model`: a decoder in the Optimum layout
//! (`input_ids`, `attention_mask`, `position_ids`,
//! `past_key_values.N.key|value` → `logits`, `present.N.key|value`). Its KV
//! cache stays on the host (`mote:edge/state`); text is emitted as it is
//! generated (`mote:edge/output`), whole UTF-8 characters only, never a
//! prefix of a stop string.
//!
//! Output: `text` (`BYTES` [1]), `token_ids` (`INT64` [n]) and parameters
//! `finish_reason` (`stop` | `length`), `prompt_tokens`,
//! `completion_tokens` (the host's token meter). Sampling draws from a
//! generator seeded by `seed` (default 0): the same request gives the same
//! tokens, so a receipt can be re-executed and checked.

mod sampling;

use mote_sdk::{Datatype, Graph, Handler, HandlerError, IoTensor, Request, RequestExt, Response, Tensor, TensorData, TensorType};
use sampling::{Sampler, SamplingParams};
use serde::Deserialize;
use std::sync::OnceLock;
use tokenizers::Tokenizer;

/// The tokenizer and model facts written by `scripts/convert_gguf.py`.
const TOKENIZER_JSON: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../build/models/smollm2/tokenizer.json"));
const CONFIG_JSON: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../build/models/smollm2/config.json"));
const DEFAULT_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
/// Upper bound on `max_tokens` (the model's context bounds it too).
const MAX_NEW_TOKENS: u32 = 4096;

#[derive(Deserialize)]
struct ModelConfig {
    layers: usize,
    kv_heads: u32,
    head_dim: u32,
    context: usize,
    eos_token_id: u32,
    bos_token: String,
    eos_token: String,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Option<Vec<Message>>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_k: Option<u32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    /// Keep generating past the end-of-sequence token (vLLM's field; the
    /// benchmark uses it to generate an exact number of tokens).
    #[serde(default)]
    ignore_eos: bool,
}

fn invalid(msg: impl Into<String>) -> HandlerError {
    HandlerError::InvalidInput(msg.into())
}

/// ChatML, as the model's template renders it (default system prompt when
/// the conversation has none, then the assistant's turn).
fn chat_prompt(messages: &[Message], cfg: &ModelConfig) -> Result<String, HandlerError> {
    if messages.is_empty() {
        return Err(invalid("messages is empty"));
    }
    let (start, end) = (&cfg.bos_token, &cfg.eos_token);
    let mut s = String::new();
    if messages[0].role != "system" {
        s.push_str(&format!("{start}system\n{DEFAULT_SYSTEM}{end}\n"));
    }
    for m in messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(invalid(format!("unknown role '{}': expected system, user or assistant", m.role)));
        }
        s.push_str(&format!("{start}{}\n{}{end}\n", m.role, m.content));
    }
    s.push_str(&format!("{start}assistant\n"));
    Ok(s)
}

/// The parsed tokenizer and model facts: built once, by `mote build`'s
/// pre-initialization (`init` below), so a job finds them in its memory
/// instead of parsing 2 MB of JSON (≈ 0.1 s in the sandbox, docs/llm.md).
/// A build without pre-initialization parses them in the first call.
static TOKENIZER: OnceLock<Result<Tokenizer, String>> = OnceLock::new();
static CONFIG: OnceLock<Result<ModelConfig, String>> = OnceLock::new();

fn tokenizer() -> Result<&'static Tokenizer, HandlerError> {
    TOKENIZER
        .get_or_init(|| {
            tokenizers::utils::parallelism::set_parallelism(false);
            Tokenizer::from_bytes(TOKENIZER_JSON).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| HandlerError::BackendError(e.clone()))
}

fn config() -> Result<&'static ModelConfig, HandlerError> {
    CONFIG
        .get_or_init(|| serde_json::from_slice(CONFIG_JSON).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| HandlerError::BackendError(e.clone()))
}

/// The pre-initializer: everything here is the same for every job. It
/// also tokenizes a conversation once, so that what the tokenizer builds
/// lazily on first use (its pre-tokenizer regex's automaton states, the
/// BPE word cache of the template's words) is in the snapshot too.
fn init() {
    let (Ok(tok), Ok(cfg)) = (tokenizer(), config()) else { return };
    let warm = [Message { role: "user".into(), content: "What is the capital of France? Tell me a fun fact.".into() }];
    if let Ok(prompt) = chat_prompt(&warm, cfg) {
        let _ = tok.encode(prompt.as_str(), false);
    }
}

mote_sdk::export_initializer!(init);

struct Chat;

impl Handler for Chat {
    fn handle(request: Request) -> Result<Response, HandlerError> {
        let body = request.input("request")?.byte_elements()?;
        let [body] = <[Vec<u8>; 1]>::try_from(body).map_err(|_| invalid("'request' must hold one JSON object"))?;
        let req: ChatRequest =
            serde_json::from_slice(&body).map_err(|e| invalid(format!("request is not a chat request: {e}")))?;
        let cfg = config()?;
        let prompt = match (&req.messages, &req.prompt) {
            (Some(m), None) => chat_prompt(m, cfg)?,
            (None, Some(p)) => p.clone(),
            _ => return Err(invalid("give either 'messages' or 'prompt'")),
        };
        let max_new = req.max_completion_tokens.or(req.max_tokens).unwrap_or(256);
        if max_new == 0 || max_new > MAX_NEW_TOKENS {
            return Err(invalid(format!("max_tokens must be 1..={MAX_NEW_TOKENS}")));
        }
        let params = SamplingParams {
            temperature: req.temperature.unwrap_or(1.0),
            top_k: req.top_k.unwrap_or(0),
            top_p: req.top_p.unwrap_or(1.0),
            repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        };
        params.validate().map_err(invalid)?;
        let stops: Vec<String> = match req.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stops.len() > 4 || stops.iter().any(String::is_empty) {
            return Err(invalid("stop: at most 4 non-empty strings"));
        }

        let tok = tokenizer()?;
        let prompt_ids: Vec<u32> =
            tok.encode(prompt.as_str(), false).map_err(|e| invalid(format!("tokenizing: {e}")))?.get_ids().to_vec();
        if prompt_ids.is_empty() {
            return Err(invalid("the prompt is empty"));
        }
        if prompt_ids.len() + max_new as usize > cfg.context {
            return Err(invalid(format!(
                "prompt ({} tokens) plus max_tokens ({max_new}) exceeds the model's context of {} tokens",
                prompt_ids.len(),
                cfg.context
            )));
        }

        let model = Graph::by_name("model")?;
        let pairs: Vec<(String, String)> = (0..cfg.layers)
            .flat_map(|i| {
                ["key", "value"].map(|kv| (format!("present.{i}.{kv}"), format!("past_key_values.{i}.{kv}")))
            })
            .collect();
        model.bind_state(&pairs)?;

        let mut sampler = Sampler::new(params, req.seed.unwrap_or(0));
        let mut seen: Vec<u32> = prompt_ids.clone();
        let mut generated: Vec<u32> = Vec::new();
        let mut feed: Vec<u32> = prompt_ids.clone();
        let mut emitted = 0usize; // bytes of `text` already streamed
        let mut text = String::new();
        // Incremental detokenization: byte-level BPE decodes a run of
        // tokens to exactly its bytes, so the text is `committed` (tokens
        // before `start`, ending on a whole character) plus the decode of
        // the tokens since — each step decodes a few tokens, not all.
        let mut committed = String::new();
        let mut start = 0usize;
        let mut finish = "length";
        while generated.len() < max_new as usize {
            let past = seen.len() - feed.len();
            let total = seen.len();
            let ids: Vec<u8> = feed.iter().flat_map(|&t| i64::from(t).to_le_bytes()).collect();
            let mask: Vec<u8> = (0..total).flat_map(|_| 1i64.to_le_bytes()).collect();
            let pos: Vec<u8> = (past..total).flat_map(|p| (p as i64).to_le_bytes()).collect();
            let n = feed.len() as u32;
            let mut inputs = vec![
                ("input_ids".to_string(), Tensor::new(TensorType::I64, &[1, n], &ids)),
                ("attention_mask".to_string(), Tensor::new(TensorType::I64, &[1, total as u32], &mask)),
                ("position_ids".to_string(), Tensor::new(TensorType::I64, &[1, n], &pos)),
            ];
            if past == 0 {
                // A new sequence: empty caches (nothing kept yet).
                for (_, input) in &pairs {
                    inputs.push((input.clone(), Tensor::new(TensorType::Fp32, &[1, cfg.kv_heads, 0, cfg.head_dim], &[])));
                }
            }
            let outputs = model.run(inputs)?;
            let logits = outputs
                .into_iter()
                .find(|(name, _)| name == "logits")
                .ok_or_else(|| HandlerError::BackendError("the model returned no 'logits'".into()))?
                .1;
            let dims = logits.dims();
            let vocab = *dims.last().unwrap_or(&0) as usize;
            let bytes = logits.bytes();
            let last = &bytes[bytes.len() - vocab * 4..];
            let mut row = mote_sdk::f32s_from_le_bytes(last);
            let next = sampler.sample(&mut row, &seen);
            generated.push(next);
            seen.push(next);
            feed = vec![next];
            if next == cfg.eos_token_id && !req.ignore_eos {
                finish = "stop";
                break;
            }
            let tail = tok.decode(&generated[start..], true).map_err(|e| HandlerError::BackendError(e.to_string()))?;
            if tail.ends_with('\u{FFFD}') {
                text = format!("{committed}{tail}");
            } else {
                committed.push_str(&tail);
                start = generated.len();
                text.clone_from(&committed);
            }
            if let Some(at) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(at);
                finish = "stop";
                break;
            }
            // Stream what is settled: whole characters, and nothing that
            // could still become the start of a stop string.
            let mut settled = text.len();
            if text.ends_with('\u{FFFD}') {
                settled = text.trim_end_matches('\u{FFFD}').len();
            }
            for s in &stops {
                for k in (1..s.len()).rev() {
                    if s.is_char_boundary(k) && text[..settled].ends_with(&s[..k]) {
                        settled = settled.min(settled - k);
                        break;
                    }
                }
            }
            if settled > emitted {
                mote_sdk::emit(&text.as_bytes()[emitted..settled]);
                emitted = settled;
            }
        }
        if finish == "stop" && generated.last() == Some(&cfg.eos_token_id) {
            // The end-of-sequence token is special: it decodes to nothing.
            let tail = tok.decode(&generated[start..], true).map_err(|e| HandlerError::BackendError(e.to_string()))?;
            text = format!("{committed}{tail}");
        }
        if text.len() > emitted {
            mote_sdk::emit(&text.as_bytes()[emitted..]);
        }
        let usage = mote_sdk::tokens();
        let ids: Vec<i64> = generated.iter().map(|&t| i64::from(t)).collect();
        Ok(Response {
            outputs: vec![
                IoTensor::from_strings("text", &[1], &[text.as_str()]),
                IoTensor::from_i64("token_ids", &[ids.len() as u64], &ids),
            ],
            parameters: vec![
                ("finish_reason".into(), finish.into()),
                ("prompt_tokens".into(), usage.prompt.to_string()),
                ("completion_tokens".into(), usage.completion.to_string()),
            ],
        })
    }
}

mote_sdk::export_handler!(Chat);

// Keeps `Datatype` in use for readers looking for the output types.
const _: Datatype = Datatype::Bytes;

/// getrandom 0.3's custom backend on wasm32-unknown-unknown (selected by
/// `mote build`). Only hash-map seeding asks for it here; a fixed stream
/// keeps the job deterministic. Sampling has its own seeded generator.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
#[no_mangle]
unsafe extern "Rust" fn __getrandom_v03_custom(dest: *mut u8, len: usize) -> Result<(), getrandom::Error> {
    let mut s = sampling::SplitMix64::new(0x6d6f_7465);
    for i in 0..len {
        // SAFETY: getrandom hands us `len` writable bytes at `dest`.
        unsafe { *dest.add(i) = s.next_u64() as u8 };
    }
    Ok(())
}
