//! Which limits a pod gets. The operator's limits are a boundary no pod can
//! cross; within it, the pod's own request applies.
//!
//! Per direction:
//!
//! - **What the pod asks for**: its annotations (`kubernetes.io/{ingress,egress}-bandwidth`,
//!   `bpf-ratelimit.io/{ingress,egress}-burst`, and the prototype's
//!   `rate: "<N>M"` for ingress, below `kubernetes.io/ingress-bandwidth`), else
//!   `runtimeConfig.bandwidth` (what the runtime derived from them). A 0, or a
//!   runtime's "no burst given" value, asks for nothing.
//! - **The operator's policy** (the plugin config, with the pod namespace's
//!   entry in `namespaces` overriding it key by key): `ingressRate` is both
//!   the default and the ceiling, as the reference plugin lets the conflist
//!   win; `defaultIngressRate` applies when the pod asks for nothing;
//!   `maxIngressRate` caps what it asks for. Likewise for bursts and egress.
//! - The pod's request, else the default, capped by the ceiling (with a
//!   warning). With a ceiling and nothing else, the ceiling applies: a pod
//!   can never be unlimited where the operator set a limit.
//! - A request is capped before it is range-checked, so a pod that asks for
//!   more than the ceiling (even more than a rate can be) gets the ceiling.
//! - Bursts follow the rate the pod gets: the default burst is computed from
//!   the capped rate, and a pod's own burst is capped by the operator's burst
//!   ceiling or, where there is none, by the default burst of the rate
//!   ceiling. No burst is ever above MAX_BURST.

use std::collections::BTreeMap;

use crate::cni::{truncate, CniError};
use crate::policy::limits::*;
use crate::policy::operator::{BandwidthKeys, DirectionPolicy, Policy};
use crate::policy::quantity;

/// What a pod's limits are resolved from.
#[derive(Debug, Clone)]
pub struct PodRequest<'a> {
    /// The operator's policy for the pod's namespace.
    pub policy: Policy,
    /// The namespace whose entry in `namespaces` overrode the plugin
    /// config's keys, if any (for error messages).
    pub overriding_namespace: Option<String>,
    /// runtimeConfig.bandwidth.
    pub runtime_bandwidth: BandwidthKeys,
    /// The pod's annotations.
    pub annotations: &'a BTreeMap<String, String>,
}

/// A value and where it came from, for error messages.
#[derive(Clone)]
struct Sourced {
    value: u64,
    source: String,
}

/// The pod's limits in `namespace` (K8S_POD_NAMESPACE), or the errors that
/// name the key or annotation to fix. Capped requests are logged.
pub fn resolve(request: &PodRequest) -> Result<Limits, CniError> {
    resolve_noting(request, &mut Vec::new())
}

/// As `resolve`, and adds to `clamped` a line for each rate the datapath
/// cannot enforce as asked and enforces at the nearest rate it can (ADD
/// keeps them for `list`).
pub fn resolve_noting(request: &PodRequest, clamped: &mut Vec<String>) -> Result<Limits, CniError> {
    let mut limits = Limits::default();
    let ceilings = ceilings(&request.policy);
    for dir in Direction::BOTH {
        let limit = resolve_direction(request, dir, &ceilings, clamped)?;
        limits.set(dir, limit);
    }
    Ok(limits)
}

/// The rates kubelet accepts in the bandwidth annotations (1k to 1P): a
/// request in this range never fails ADD; outside what the datapath
/// enforces exactly (MIN_RATE to MAX_RATE) it is clamped, with a warning.
pub const KUBELET_MIN_RATE: u64 = 1_000;
pub const KUBELET_MAX_RATE: u64 = 1_000_000_000_000_000;

/// The operator's ceilings for a pod in `namespace`.
pub fn ceilings(policy: &Policy) -> Ceilings {
    let pick = |p: &DirectionPolicy| -> (Option<u64>, Option<u64>) {
        let lower = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        (lower(p.rate.filter(|r| *r != 0), p.max_rate.filter(|r| *r != 0)), lower(p.burst.filter(|b| *b != 0), p.max_burst.filter(|b| *b != 0)))
    };
    // Without a burst ceiling of its own, a rate ceiling bounds a pod's burst
    // by its default burst: a pod capped to 100M must not keep a burst sized
    // for the 100G it asked for.
    let implied = |dir: Direction, (rate, burst): (Option<u64>, Option<u64>)| (rate, burst.or(rate.map(|r| default_burst(dir, r))));
    let (ingress_rate, ingress_burst) = implied(Direction::Ingress, pick(&policy.ingress));
    let (egress_rate, egress_burst) = implied(Direction::Egress, pick(&policy.egress));
    Ceilings { ingress_rate, ingress_burst, egress_rate, egress_burst }
}

/// The burst ceiling the operator set for `dir` (the node-wide burst or
/// `max*Burst`, the lower), without the one a rate ceiling implies.
fn operator_burst_ceiling(p: &DirectionPolicy) -> Option<u64> {
    match (p.burst.filter(|b| *b != 0), p.max_burst.filter(|b| *b != 0)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn resolve_direction(request: &PodRequest, dir: Direction, ceilings: &Ceilings, clamped: &mut Vec<String>) -> Result<Option<Limit>, CniError> {
    let policy = *request.policy.direction(dir);
    let where_ = match request.overriding_namespace.as_deref() {
        Some(ns) => format!("the plugin config (namespace {:?})", truncate(ns, 63)),
        None => "the plugin config".to_string(),
    };
    let sourced = |v: Option<u64>, key: String| v.filter(|v| *v != 0).map(|value| Sourced { value, source: format!("{key} in {where_}") });
    let capitalised = if dir == Direction::Ingress { "Ingress" } else { "Egress" };

    // What the pod asks for.
    let (rt_rate, rt_burst) = request.runtime_bandwidth.of(dir);
    let mut rate = rt_rate.filter(|r| *r != 0).map(|value| Sourced { value, source: format!("{} in runtimeConfig.bandwidth", dir.key("Rate")) });
    let mut burst = rt_burst
        .filter(|b| *b != 0 && !is_sentinel(*b))
        .map(|value| Sourced { value, source: format!("{} in runtimeConfig.bandwidth", dir.key("Burst")) });
    let ann = request.annotations;
    if dir == Direction::Ingress {
        if let Some(v) = ann.get(PROTOTYPE_RATE) {
            // The prototype's key is not namespaced: a pod may carry
            // `rate` for its own reasons, so what does not parse is ignored.
            match prototype_rate(v) {
                Some(0) => {}
                Some(value) => rate = Some(Sourced { value, source: format!("pod annotation {PROTOTYPE_RATE:?}") }),
                None => log::warn!("ignoring pod annotation \"rate\": {:?} is not \"<N>M\" (N Mbit/s)", truncate(v, 40)),
            }
        }
    }
    for (name, slot) in [(dir.rate_annotation(), &mut rate), (dir.burst_annotation(), &mut burst)] {
        if let Some(v) = ann.get(name) {
            let value = quantity::parse(v).map_err(|e| CniError::config(format!("invalid pod annotation {name:?}: {e}")))?;
            if value != 0 {
                *slot = Some(Sourced { value, source: format!("pod annotation {name:?}") });
            }
        }
    }

    // The operator's default where the pod asks for nothing.
    let default_rate = sourced(policy.default_rate, format!("default{capitalised}Rate")).or_else(|| sourced(policy.rate, dir.key("Rate")));
    let operator_burst = sourced(policy.default_burst, format!("default{capitalised}Burst")).or_else(|| sourced(policy.burst, dir.key("Burst")));
    let max_rate = ceilings.get(dir).0;
    let rate = rate.or(default_rate).or_else(|| max_rate.map(|value| Sourced { value, source: format!("the operator's {} ceiling", dir.name()) }));
    let Some(rate) = rate else {
        if let Some(b) = burst.or(operator_burst) {
            return Err(CniError::config(format!("{} sets a {} burst but there is no {} rate; set a rate too", b.source, dir.name(), dir.name())));
        }
        return Ok(None);
    };
    let pod_burst = burst;

    // The rate: capped first, then range-checked, so a request above the
    // ceiling gets the ceiling even when it is more than any rate can be.
    let pod_burst_ceiling = ceilings.get(dir).1;
    let mut notes = Vec::new();
    let mut rate_value = rate.value;
    if let Some(m) = max_rate.filter(|m| rate.value > *m) {
        notes.push(format!("rate {} > {m} bits/s", rate.value));
        rate_value = m;
    }
    if !(KUBELET_MIN_RATE..=KUBELET_MAX_RATE).contains(&rate_value) {
        return Err(CniError::config(format!(
            "{} is {} bits/s; a {} rate must be between {} and {} bits/s (1k to 1P, as kubelet accepts)",
            rate.source,
            rate.value,
            dir.name(),
            KUBELET_MIN_RATE,
            KUBELET_MAX_RATE
        )));
    }
    let enforceable = rate_value.clamp(MIN_RATE, MAX_RATE);
    if enforceable != rate_value {
        let line = format!(
            "{} rate {} bits/s ({}) clamped to {} bits/s: the datapath enforces 8k to 100G",
            dir.name(),
            rate_value,
            rate.source,
            enforceable
        );
        log::warn!("{line}");
        clamped.push(line);
        rate_value = enforceable;
    }

    // The burst: the pod's own, capped by the burst ceiling (the operator's,
    // else the rate ceiling's default burst); else the operator's, capped by
    // the operator's burst ceiling; else the default for the rate the pod gets.
    let (burst, ceiling) = match (pod_burst, operator_burst) {
        (Some(b), _) => (Some(b), pod_burst_ceiling),
        (None, Some(b)) => (Some(b), operator_burst_ceiling(&policy)),
        (None, None) => (None, None),
    };
    let burst_value = match burst {
        None => default_burst(dir, rate_value),
        Some(b) => {
            let mut value = b.value;
            if let Some(m) = ceiling.filter(|m| b.value > *m) {
                notes.push(format!("burst {} > {m} bits", b.value));
                value = m;
            }
            if value > MAX_BURST {
                return Err(CniError::config(format!("{} is {} bits; a burst can be at most {} bits (1 GiB)", b.source, b.value, MAX_BURST)));
            }
            value
        }
    };
    if !notes.is_empty() {
        log::warn!("{} request capped by the operator's limit: {} (asked by {})", dir.name(), notes.join(", "), rate.source);
    }
    Ok(Some(Limit { rate: rate_value, burst: burst_value }))
}

fn is_sentinel(burst: u64) -> bool {
    BURST_SENTINELS.contains(&burst)
}

/// The prototype's annotation: `rate: "<N>M"`, N Mbit/s (N may be
/// fractional); `None` if it is not of that form.
fn prototype_rate(v: &str) -> Option<u64> {
    let n = v.trim().strip_suffix('M')?;
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    quantity::parse(&format!("{n}M")).ok()
}
