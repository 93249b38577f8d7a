//! `mote:edge/state`: outputs of an execution context kept on the host and
//! fed back as its inputs (a decoder's KV cache), and the token meter that
//! rides on it.

use super::{NnExecContext, NnResult, NnView};
use crate::host::bindings::mote::edge::state;
use wasmtime::component::Resource;

impl state::Host for NnView<'_> {
    fn bind(&mut self, c: Resource<NnExecContext>, pairs: Vec<(String, String)>) -> NnResult<()> {
        let e = self.table.get_mut(&c)?;
        let Some(ctx) = e.ctx.as_mut() else {
            return Err(wasmtime::Error::msg("execution context re-entered"));
        };
        match ctx.bind_state(&pairs) {
            Ok(()) => {
                e.bound = pairs;
                e.has_state = false;
                e.last_rows = 0;
                Ok(Ok(()))
            }
            Err(err) => self.backend_error(err),
        }
    }

    fn reset(&mut self, c: Resource<NnExecContext>) -> wasmtime::Result<()> {
        let e = self.table.get_mut(&c)?;
        if let Some(ctx) = e.ctx.as_mut() {
            ctx.reset_state();
        }
        e.has_state = false;
        e.last_rows = 0;
        Ok(())
    }
}

/// Tokens one compute on a context with bound state adds to the meter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StepTokens {
    pub(crate) prompt: u64,
    pub(crate) completion: u64,
}

/// Counts a step: `fed` tokens went in (the elements of `input_ids`, or of
/// the first input), over `rows` batch rows; each row samples one token. A
/// step that continues kept state was fed the previous step's samples
/// (`last_rows` of them) back: those are completion tokens already
/// counted, the rest of what it was fed is prompt.
pub(crate) fn step_tokens(fed: u64, rows: u64, continuing: bool, last_rows: u64) -> StepTokens {
    let prompt = if continuing { fed.saturating_sub(last_rows) } else { fed };
    StepTokens { prompt, completion: rows }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_counts_its_prompt_once_and_one_token_per_step() {
        // Prefill of 16 tokens, then 9 steps feeding back one token each.
        let mut prompt = 0;
        let mut completion = 0;
        let first = step_tokens(16, 1, false, 0);
        prompt += first.prompt;
        completion += first.completion;
        for _ in 0..9 {
            let s = step_tokens(1, 1, true, 1);
            prompt += s.prompt;
            completion += s.completion;
        }
        assert_eq!((prompt, completion), (16, 10));
        // A second turn appended to the kept sequence: its new tokens are
        // prompt, the fed-back sample is not counted twice.
        assert_eq!(step_tokens(7, 1, true, 1), StepTokens { prompt: 6, completion: 1 });
    }
}
