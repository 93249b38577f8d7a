//! The node's price table and how usage is priced.
//!
//! Prices are integers in the node's smallest price unit so that a signed
//! receipt never depends on float formatting. Each component rounds up.

use serde::{Deserialize, Serialize};

/// Price per resource, in price units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceTable {
    /// Units per second of backend compute.
    pub per_backend_second: u64,
    /// Units per 10^9 fuel.
    pub per_gfuel: u64,
    /// Units per 10^6 bytes moved in or out of the backend.
    pub per_mb: u64,
    /// Units per token (prompt or completion) counted by the host for
    /// contexts with bound state (LLM decoding; docs/wit.md).
    pub per_token: u64,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self { per_backend_second: 1000, per_gfuel: 100, per_mb: 1, per_token: 0 }
    }
}

impl PriceTable {
    /// Prices a job's usage: compute, fuel, bytes and tokens.
    pub fn price_usage(&self, u: &crate::receipt::Usage) -> u64 {
        let tokens = u.prompt_tokens.saturating_add(u.completion_tokens);
        self.price(u.backend_ns, u.fuel, u.bytes_in.saturating_add(u.bytes_out))
            .saturating_add(tokens.saturating_mul(self.per_token))
    }

    /// Prices a job's consumption.
    pub fn price(&self, backend_ns: u64, fuel: u64, bytes: u64) -> u64 {
        let part = |amount: u64, per: u64, unit: u64| -> u64 {
            (u128::from(amount) * u128::from(per)).div_ceil(u128::from(unit)).min(u128::from(u64::MAX)) as u64
        };
        part(backend_ns, self.per_backend_second, 1_000_000_000)
            .saturating_add(part(fuel, self.per_gfuel, 1_000_000_000))
            .saturating_add(part(bytes, self.per_mb, 1_000_000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_round_up_per_component() {
        let p = PriceTable { per_backend_second: 1000, per_gfuel: 100, per_mb: 1, per_token: 0 };
        assert_eq!(p.price(0, 0, 0), 0);
        assert_eq!(p.price(1, 0, 0), 1, "a nanosecond of compute still costs a unit");
        assert_eq!(p.price(2_000_000_000, 0, 0), 2000);
        assert_eq!(p.price(0, 3_000_000_000, 0), 300);
        assert_eq!(p.price(0, 0, 1_500_000), 2);
        let dear = PriceTable { per_backend_second: u64::MAX, per_gfuel: u64::MAX, per_mb: u64::MAX, per_token: u64::MAX };
        assert_eq!(dear.price(u64::MAX, u64::MAX, u64::MAX), u64::MAX, "saturates, never wraps");
        let u = crate::receipt::Usage { prompt_tokens: u64::MAX, completion_tokens: 1, ..Default::default() };
        assert_eq!(dear.price_usage(&u), u64::MAX);
    }

    #[test]
    fn tokens_are_priced_per_token() {
        let p = PriceTable { per_backend_second: 0, per_gfuel: 0, per_mb: 0, per_token: 3 };
        let u = crate::receipt::Usage { prompt_tokens: 10, completion_tokens: 5, ..Default::default() };
        assert_eq!(p.price_usage(&u), 45);
    }
}
