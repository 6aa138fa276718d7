//! What the operator and the runtime can say about limits: the reference
//! plugin's bandwidth keys, the operator's policy per direction, and what a
//! limit counts.

use serde::{Deserialize, Serialize};

use crate::policy::limits::Direction;

/// Bandwidth keys as the reference `bandwidth` plugin names them: rates in
/// bits/s, bursts in bits. `None` means the key was absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandwidthKeys {
    pub ingress_rate: Option<u64>,
    pub ingress_burst: Option<u64>,
    pub egress_rate: Option<u64>,
    pub egress_burst: Option<u64>,
}

/// What the operator set for one direction in the plugin config. Rates are
/// bits/s, bursts bits; `None` means the key was absent.
///
/// - `rate`/`burst` (`ingressRate`, as the reference plugin names them) are
///   the node-wide limit: both the default and the ceiling;
/// - `default_*` (`defaultIngressRate`) apply when the pod asks for nothing;
/// - `max_*` (`maxIngressRate`) clamp what the pod asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionPolicy {
    pub rate: Option<u64>,
    pub burst: Option<u64>,
    pub default_rate: Option<u64>,
    pub default_burst: Option<u64>,
    pub max_rate: Option<u64>,
    pub max_burst: Option<u64>,
}

impl DirectionPolicy {
    /// `over`'s keys where it sets them, else this one's.
    pub fn overlaid(self, over: DirectionPolicy) -> DirectionPolicy {
        DirectionPolicy {
            rate: over.rate.or(self.rate),
            burst: over.burst.or(self.burst),
            default_rate: over.default_rate.or(self.default_rate),
            default_burst: over.default_burst.or(self.default_burst),
            max_rate: over.max_rate.or(self.max_rate),
            max_burst: over.max_burst.or(self.max_burst),
        }
    }
}

/// The operator's limits for both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl Policy {
    pub fn direction(&self, dir: Direction) -> &DirectionPolicy {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn overlaid(self, over: Policy) -> Policy {
        Policy { ingress: self.ingress.overlaid(over.ingress), egress: self.egress.overlaid(over.egress) }
    }
}

impl BandwidthKeys {
    /// `dir`'s (rate, burst).
    pub fn of(&self, dir: Direction) -> (Option<u64>, Option<u64>) {
        match dir {
            Direction::Ingress => (self.ingress_rate, self.ingress_burst),
            Direction::Egress => (self.egress_rate, self.egress_burst),
        }
    }
}

/// What a limit counts. The datapath always counts frames on the wire;
/// `TcpGoodput` scales the frame budget so that bulk TCP's payload meets the
/// limit, as the `limitBasis` key asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitBasis {
    /// Every frame's Ethernet, IP and L4 headers and payload, as tc's TBF,
    /// the reference plugin and Calico count.
    #[default]
    Frames,
    /// Frames, scaled by 1514/1448: a full-sized TCP segment's frame per
    /// byte of its payload, so bulk TCP goodput meets the limit and the wire
    /// carries at most 4.6% more.
    TcpGoodput,
}

impl LimitBasis {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "frames" => Some(LimitBasis::Frames),
            "tcp-goodput" => Some(LimitBasis::TcpGoodput),
            _ => None,
        }
    }

    /// The frame budget, in bytes per second on the wire, for a limit of `rate` bits/s.
    pub fn wire_bytes_per_second(self, rate: u64) -> u64 {
        match self {
            LimitBasis::Frames => rate / 8,
            LimitBasis::TcpGoodput => ((rate as u128) * 1514 / (1448 * 8)) as u64,
        }
    }

    /// The limit (bits/s) whose frame budget is `bytes_per_s`: the inverse
    /// of wire_bytes_per_second. Under tcp-goodput up to 8 limits share one
    /// budget; of those, the roundest (most trailing zeros in decimal),
    /// which is the one people ask for: 10M's budget reads back as 10M.
    pub fn limit_for_wire_bytes_per_second(self, bytes_per_s: u64) -> u64 {
        match self {
            LimitBasis::Frames => bytes_per_s.saturating_mul(8),
            LimitBasis::TcpGoodput => {
                let b = bytes_per_s as u128;
                let lowest = (b * 1448 * 8).div_ceil(1514);
                let highest = ((b + 1) * 1448 * 8).div_ceil(1514) - 1;
                let zeros = |mut r: u128| {
                    let mut n = 0;
                    while r != 0 && r % 10 == 0 {
                        r /= 10;
                        n += 1;
                    }
                    n
                };
                let roundest = (lowest..=highest).max_by_key(|r| (zeros(*r), std::cmp::Reverse(*r))).unwrap_or(lowest);
                u64::try_from(roundest).unwrap_or(u64::MAX)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LimitBasis;

    /// `set` reads a pod's limit back from its wire budget: the round trip
    /// must give the limit again, or each `set` that keeps the rate moves it.
    #[test]
    fn a_limit_round_trips_through_its_wire_budget() {
        for basis in [LimitBasis::Frames, LimitBasis::TcpGoodput] {
            for rate in [1_000u64, 8_000, 10_000_000, 12_345_678, 100_000_000, 999_999_999_999, 1_000_000_000_000_000] {
                let budget = basis.wire_bytes_per_second(rate);
                let back = basis.limit_for_wire_bytes_per_second(budget);
                assert_eq!(basis.wire_bytes_per_second(back), budget, "{basis:?} {rate}");
                // Within one byte/s of budget of the limit asked for, and
                // exact for round limits.
                assert!(back.abs_diff(rate) <= 8, "{basis:?}: {rate} read back as {back}");
                if rate % 1000 == 0 {
                    assert_eq!(back, rate, "{basis:?}");
                }
            }
        }
    }
}
