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
//!
//! Rates are bits/s and bursts bits, as in the reference bandwidth plugin.

use crate::cni::{truncate, CniError};
use crate::netconf::{BandwidthKeys, DirectionPolicy, NetConf};
use crate::quantity;

pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";
pub const INGRESS_BURST: &str = "bpf-ratelimit.io/ingress-burst";
pub const EGRESS_BURST: &str = "bpf-ratelimit.io/egress-burst";
pub const PROTOTYPE_RATE: &str = "rate";

/// "No burst given" as containerd (u32::MAX bits) and CRI-O (u32::MAX * 8 - 1) send it.
pub const BURST_SENTINELS: [u64; 2] = [4_294_967_295, 34_359_738_359];

pub const MIN_RATE: u64 = 8_000;
pub const MAX_RATE: u64 = 100_000_000_000;
pub const MAX_BURST: u64 = 8 * (1 << 30);

/// Default bursts, in time at the configured rate, with a floor in bytes.
///
/// Ingress, where it is policed, can only drop. A sender at in-cluster RTTs
/// is never slowed by its window, so after a drop storm it recovers by
/// retransmission timeout (200 ms minimum); a bucket smaller than
/// rate x 200 ms overflows during that stall and the pod gets less than its
/// rate. Measured here (iperf3 -R, 4 s): burst = rate x 40 ms gave 0.20 of
/// the rate at 100M and 1G; rate x 250 ms gave 1.01 and 1.00. See docs/shaping.md.
///
/// Egress TCP is paced per socket, so its bucket only absorbs what pacing
/// lets through above the rate: each connection's first 10 segments are
/// unpaced, and a sender whose pacing timer fired late may catch up at up to
/// twice its rate. With rate x 10 ms (64 KiB floor), 8 flows at 100M drained
/// the bucket into drops and got 0.96 of the rate; with rate x 50 ms, 1.00
/// and no drops. See docs/shaping.md.
pub const INGRESS_BURST_MS: u64 = 250;
pub const INGRESS_BURST_MIN_BYTES: u64 = 256 * 1024;
pub const EGRESS_BURST_MS: u64 = 50;
pub const EGRESS_BURST_MIN_BYTES: u64 = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The config key prefix: `ingressRate`, `ingressBurst`.
    fn key(self, what: &str) -> String {
        format!("{}{what}", self.name())
    }

    fn rate_annotation(self) -> &'static str {
        match self {
            Direction::Ingress => INGRESS_BANDWIDTH,
            Direction::Egress => EGRESS_BANDWIDTH,
        }
    }

    fn burst_annotation(self) -> &'static str {
        match self {
            Direction::Ingress => INGRESS_BURST,
            Direction::Egress => EGRESS_BURST,
        }
    }

    /// This direction's (rate, burst) among the reference plugin's keys.
    fn of(self, keys: &BandwidthKeys) -> (Option<u64>, Option<u64>) {
        match self {
            Direction::Ingress => (keys.ingress_rate, keys.ingress_burst),
            Direction::Egress => (keys.egress_rate, keys.egress_burst),
        }
    }

    /// (ms of rate, minimum bytes) of the default burst.
    fn default_burst_sizing(self) -> (u64, u64) {
        match self {
            Direction::Ingress => (INGRESS_BURST_MS, INGRESS_BURST_MIN_BYTES),
            Direction::Egress => (EGRESS_BURST_MS, EGRESS_BURST_MIN_BYTES),
        }
    }
}

/// One direction's limit. Both fields are in bits (per second for the rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rate: u64,
    pub burst: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub ingress: Option<Limit>,
    pub egress: Option<Limit>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }

    pub fn get(&self, dir: Direction) -> Option<Limit> {
        match dir {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }

    fn set(&mut self, dir: Direction, limit: Option<Limit>) {
        match dir {
            Direction::Ingress => self.ingress = limit,
            Direction::Egress => self.egress = limit,
        }
    }
}

/// The operator's ceilings for one pod (bits/s, bits), which `set` enforces
/// too; `None` where there is none. A burst ceiling is the operator's, or,
/// where only the rate has a ceiling, that rate's default burst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ceilings {
    pub ingress_rate: Option<u64>,
    pub ingress_burst: Option<u64>,
    pub egress_rate: Option<u64>,
    pub egress_burst: Option<u64>,
}

impl Ceilings {
    pub fn get(&self, dir: Direction) -> (Option<u64>, Option<u64>) {
        match dir {
            Direction::Ingress => (self.ingress_rate, self.ingress_burst),
            Direction::Egress => (self.egress_rate, self.egress_burst),
        }
    }

    /// Caps a requested limit; says what was capped, for a warning.
    pub fn cap(&self, dir: Direction, limit: Limit) -> (Limit, Option<String>) {
        let (max_rate, max_burst) = self.get(dir);
        let mut capped = limit;
        let mut notes = Vec::new();
        if let Some(m) = max_rate.filter(|m| limit.rate > *m) {
            capped.rate = m;
            notes.push(format!("rate {} > {m} bits/s", limit.rate));
        }
        if let Some(m) = max_burst.filter(|m| limit.burst > *m) {
            capped.burst = m;
            notes.push(format!("burst {} > {m} bits", limit.burst));
        }
        let note = (!notes.is_empty()).then(|| format!("{} request capped by the operator's limit: {}", dir.name(), notes.join(", ")));
        (capped, note)
    }
}

/// The burst a pod gets at `rate` when nobody sets one; never above MAX_BURST.
pub fn default_burst(direction: Direction, rate: u64) -> u64 {
    let (ms, min_bytes) = direction.default_burst_sizing();
    (rate / 1000).saturating_mul(ms).max(min_bytes * 8).min(MAX_BURST)
}

/// A value and where it came from, for error messages.
#[derive(Clone)]
struct Sourced {
    value: u64,
    source: String,
}

/// The pod's limits in `namespace` (K8S_POD_NAMESPACE), or the errors that
/// name the key or annotation to fix. Capped requests are logged.
pub fn resolve(conf: &NetConf, namespace: Option<&str>) -> Result<Limits, CniError> {
    let mut limits = Limits::default();
    let ceilings = ceilings(conf, namespace)?;
    for dir in Direction::BOTH {
        let limit = resolve_direction(conf, namespace, dir, &ceilings)?;
        limits.set(dir, limit);
    }
    Ok(limits)
}

/// The operator's ceilings for a pod in `namespace`.
pub fn ceilings(conf: &NetConf, namespace: Option<&str>) -> Result<Ceilings, CniError> {
    let policy = conf.policy_for(namespace);
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
    Ok(Ceilings { ingress_rate, ingress_burst, egress_rate, egress_burst })
}

/// The burst ceiling the operator set for `dir` (the node-wide burst or
/// `max*Burst`, the lower), without the one a rate ceiling implies.
fn operator_burst_ceiling(p: &DirectionPolicy) -> Option<u64> {
    match (p.burst.filter(|b| *b != 0), p.max_burst.filter(|b| *b != 0)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn resolve_direction(conf: &NetConf, namespace: Option<&str>, dir: Direction, ceilings: &Ceilings) -> Result<Option<Limit>, CniError> {
    let policy = *conf.policy_for(namespace).direction(dir);
    let where_ = match namespace.filter(|ns| conf.namespaces.contains_key(*ns)) {
        Some(ns) => format!("the plugin config (namespace {:?})", truncate(ns, 63)),
        None => "the plugin config".to_string(),
    };
    let sourced = |v: Option<u64>, key: String| v.filter(|v| *v != 0).map(|value| Sourced { value, source: format!("{key} in {where_}") });
    let capitalised = if dir == Direction::Ingress { "Ingress" } else { "Egress" };

    // What the pod asks for.
    let (rt_rate, rt_burst) = dir.of(&conf.runtime_bandwidth);
    let mut rate = rt_rate.filter(|r| *r != 0).map(|value| Sourced { value, source: format!("{} in runtimeConfig.bandwidth", dir.key("Rate")) });
    let mut burst = rt_burst
        .filter(|b| *b != 0 && !is_sentinel(*b))
        .map(|value| Sourced { value, source: format!("{} in runtimeConfig.bandwidth", dir.key("Burst")) });
    let ann = &conf.pod_annotations;
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
    if !(MIN_RATE..=MAX_RATE).contains(&rate_value) {
        return Err(CniError::config(format!(
            "{} is {} bits/s; a {} rate must be between {} and {} bits/s (8k to 100G)",
            rate.source,
            rate.value,
            dir.name(),
            MIN_RATE,
            MAX_RATE
        )));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::code;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> NetConf {
        let mut obj = json!({"cniVersion": "1.0.0", "name": "t", "type": "bpf-ratelimit"});
        obj.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        NetConf::parse(obj.to_string().as_bytes()).unwrap()
    }

    fn with(plugin: serde_json::Value, ann: serde_json::Value) -> NetConf {
        let mut c = plugin;
        c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": ann});
        conf(c)
    }

    fn rate(l: Option<Limit>) -> Option<u64> {
        l.map(|l| l.rate)
    }

    #[test]
    fn nothing_set_means_no_limits() {
        assert!(resolve(&conf(json!({})), None).unwrap().is_empty());
        let zero = conf(json!({"runtimeConfig": {"bandwidth": {"ingressRate": 0, "egressRate": 0}}}));
        assert!(resolve(&zero, None).unwrap().is_empty());
    }

    #[test]
    fn the_conflist_rate_is_a_ceiling_no_annotation_can_raise_or_remove() {
        // 100G asked against a 10M node limit: 10M.
        let c = with(json!({"egressRate": 10_000_000}), json!({"kubernetes.io/egress-bandwidth": "100G"}));
        assert_eq!(rate(resolve(&c, None).unwrap().egress), Some(10_000_000));
        // "0" and rate: "0M" ask for nothing; the node limit stays.
        for ann in [json!({"rate": "0M"}), json!({"kubernetes.io/ingress-bandwidth": "0"})] {
            let c = with(json!({"ingressRate": 10_000_000}), ann);
            assert_eq!(rate(resolve(&c, None).unwrap().ingress), Some(10_000_000));
        }
        // The runtime's bandwidth keys cannot raise it either.
        let c = conf(json!({"egressRate": 10_000_000, "runtimeConfig": {"bandwidth": {"EgressRate": 50_000_000}}}));
        assert_eq!(rate(resolve(&c, None).unwrap().egress), Some(10_000_000));
        // Less is fine.
        let c = with(json!({"ingressRate": 10_000_000}), json!({"kubernetes.io/ingress-bandwidth": "5M"}));
        assert_eq!(rate(resolve(&c, None).unwrap().ingress), Some(5_000_000));
    }

    #[test]
    fn defaults_apply_to_pods_that_ask_for_nothing_and_maxima_cap_the_rest() {
        let plugin = json!({"defaultEgressRate": 5_000_000, "maxEgressRate": 20_000_000});
        assert_eq!(rate(resolve(&with(plugin.clone(), json!({})), None).unwrap().egress), Some(5_000_000));
        let ask = |v: &str| rate(resolve(&with(plugin.clone(), json!({"kubernetes.io/egress-bandwidth": v})), None).unwrap().egress);
        assert_eq!(ask("50M"), Some(20_000_000));
        assert_eq!(ask("10M"), Some(10_000_000));
        // A ceiling alone: a pod that asks for nothing gets the ceiling, never "unlimited".
        let c = with(json!({"maxIngressRate": 10_000_000}), json!({}));
        assert_eq!(rate(resolve(&c, None).unwrap().ingress), Some(10_000_000));
        assert!(resolve(&c, None).unwrap().egress.is_none(), "no egress policy, no egress limit");
    }

    #[test]
    fn bursts_have_defaults_and_ceilings_too() {
        let plugin = json!({"egressRate": 10_000_000, "defaultEgressBurst": 2_000_000, "maxEgressBurst": 4_000_000});
        let c = with(plugin.clone(), json!({}));
        assert_eq!(resolve(&c, None).unwrap().egress.unwrap().burst, 2_000_000);
        let c = with(plugin, json!({"bpf-ratelimit.io/egress-burst": "1G"}));
        assert_eq!(resolve(&c, None).unwrap().egress.unwrap().burst, 4_000_000);
        // With no burst anywhere, the computed default.
        let c = with(json!({"ingressRate": 10_000_000}), json!({}));
        assert_eq!(resolve(&c, None).unwrap().ingress.unwrap().burst, default_burst(Direction::Ingress, 10_000_000));
    }

    #[test]
    fn namespaces_override_the_policy_key_by_key() {
        let plugin = json!({"maxEgressRate": 10_000_000, "defaultEgressRate": 1_000_000,
                            "namespaces": {"gold": {"maxEgressRate": 1_000_000_000}}});
        let c = with(plugin, json!({"kubernetes.io/egress-bandwidth": "100M"}));
        assert_eq!(rate(resolve(&c, Some("gold")).unwrap().egress), Some(100_000_000));
        assert_eq!(rate(resolve(&c, Some("default")).unwrap().egress), Some(10_000_000));
        assert_eq!(rate(resolve(&c, None).unwrap().egress), Some(10_000_000));
        let quiet = with(json!({"maxEgressRate": 10_000_000, "defaultEgressRate": 1_000_000,
                                "namespaces": {"gold": {"maxEgressRate": 1_000_000_000}}}), json!({}));
        assert_eq!(rate(resolve(&quiet, Some("gold")).unwrap().egress), Some(1_000_000), "the default is inherited");
        let cl = ceilings(&quiet, Some("gold")).unwrap();
        assert_eq!(cl.egress_rate, Some(1_000_000_000));
    }

    #[test]
    fn without_a_policy_the_pod_asks_and_runtime_values_mean_what_they_say() {
        let c = conf(json!({"runtimeConfig": {
            "bandwidth": {"IngressRate": 10_000_000, "IngressBurst": 4_294_967_295u64},
            "io.kubernetes.cri.pod-annotations": {"kubernetes.io/egress-bandwidth": "20M", "bpf-ratelimit.io/egress-burst": "1Mi"}
        }}));
        let l = resolve(&c, None).unwrap();
        assert_eq!(l.ingress, Some(Limit { rate: 10_000_000, burst: default_burst(Direction::Ingress, 10_000_000) }));
        assert_eq!(l.egress, Some(Limit { rate: 20_000_000, burst: 1 << 20 }));
        for sentinel in BURST_SENTINELS {
            let c = conf(json!({"runtimeConfig": {"bandwidth": {"egressRate": 100_000_000, "egressBurst": sentinel}}}));
            assert_eq!(resolve(&c, None).unwrap().egress.unwrap().burst, default_burst(Direction::Egress, 100_000_000));
        }
    }

    #[test]
    fn default_bursts_scale_with_rate_above_a_floor() {
        assert_eq!(default_burst(Direction::Ingress, 1_000_000), INGRESS_BURST_MIN_BYTES * 8);
        assert_eq!(default_burst(Direction::Ingress, 10_000_000), 2_500_000);
        assert_eq!(default_burst(Direction::Ingress, 1_000_000_000), 250_000_000);
        assert_eq!(default_burst(Direction::Egress, 10_000_000), EGRESS_BURST_MIN_BYTES * 8);
        assert_eq!(default_burst(Direction::Egress, 1_000_000_000), 50_000_000);
    }

    #[test]
    fn prototype_rate_is_ingress_mbit_yields_to_kubernetes_and_is_ignored_when_not_a_rate() {
        let l = resolve(&with(json!({}), json!({"rate": "5M"})), None).unwrap();
        assert_eq!(rate(l.ingress), Some(5_000_000));
        assert!(l.egress.is_none());
        let l = resolve(&with(json!({}), json!({"rate": "5M", "kubernetes.io/ingress-bandwidth": "7M"})), None).unwrap();
        assert_eq!(rate(l.ingress), Some(7_000_000));
        for other in ["high", "fast", "10", ""] {
            let l = resolve(&with(json!({}), json!({"rate": other})), None).unwrap();
            assert!(l.is_empty(), "rate: {other:?} is not ours and must not fail the pod");
        }
    }

    #[test]
    fn invalid_namespaced_annotations_fail_with_their_name() {
        for (k, v) in [("bpf-ratelimit.io/ingress-burst", "lots"), ("kubernetes.io/egress-bandwidth", "-1M")] {
            let e = resolve(&with(json!({}), json!({k: v})), None).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.contains(k), "{e}");
        }
    }

    #[test]
    fn a_burst_without_a_rate_is_refused() {
        // In the plugin config, parsing refuses it already (netconf).
        let obj = json!({"cniVersion": "1.0.0", "name": "t", "type": "bpf-ratelimit", "ingressBurst": 1_000_000});
        let e = NetConf::parse(obj.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("rate must also be set"), "{e}");
        // A default burst with only a ceiling for the rate is fine; a burst
        // with no rate anywhere is refused here.
        let e = resolve(&conf(json!({"defaultIngressBurst": 1_000_000})), None).unwrap_err();
        assert!(e.msg.contains("no ingress rate"), "{e}");
        let e = resolve(&with(json!({}), json!({"bpf-ratelimit.io/egress-burst": "1M"})), None).unwrap_err();
        assert!(e.msg.contains("egress-burst"), "{e}");
    }

    #[test]
    fn out_of_range_rates_and_bursts_are_refused() {
        let e = resolve(&with(json!({}), json!({"kubernetes.io/ingress-bandwidth": "1k"})), None).unwrap_err();
        assert!(e.msg.contains("between"), "{e}");
        let e = resolve(&with(json!({}), json!({"kubernetes.io/ingress-bandwidth": "1T"})), None).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = resolve(&with(json!({}), json!({"kubernetes.io/ingress-bandwidth": "10M", "bpf-ratelimit.io/ingress-burst": "100G"})), None)
            .unwrap_err();
        assert!(e.msg.contains("at most"), "{e}");
    }

    #[test]
    fn bursts_follow_the_capped_rate() {
        // The case: a 100M ceiling, a pod asking 100G. Its default
        // burst is the 100M one (5 Mbit), not the 100G one (5 Gbit).
        let c = with(json!({"maxEgressRate": 100_000_000}), json!({"kubernetes.io/egress-bandwidth": "100G"}));
        let l = resolve(&c, None).unwrap().egress.unwrap();
        assert_eq!(l, Limit { rate: 100_000_000, burst: 5_000_000 });
        assert_eq!(l.burst, default_burst(Direction::Egress, 100_000_000));
        // The same through runtimeConfig.bandwidth, as containerd sends it
        // (its "no burst" value included), and for ingress.
        let c = conf(json!({"maxIngressRate": 100_000_000, "runtimeConfig": {"bandwidth": {"IngressRate": 100_000_000_000u64, "IngressBurst": 4_294_967_295u64}}}));
        assert_eq!(resolve(&c, None).unwrap().ingress.unwrap().burst, default_burst(Direction::Ingress, 100_000_000));
    }

    #[test]
    fn a_pods_burst_stays_within_the_ceilings_default_burst_unless_the_operator_sets_a_burst_ceiling() {
        let ask = |plugin: serde_json::Value, burst: &str| {
            let c = with(plugin, json!({"kubernetes.io/egress-bandwidth": "10M", "bpf-ratelimit.io/egress-burst": burst}));
            resolve(&c, None).unwrap().egress.unwrap()
        };
        // Under a 100M ceiling, at most 100M's default burst (5 Mbit), even at 10M.
        assert_eq!(ask(json!({"maxEgressRate": 100_000_000}), "1G").burst, 5_000_000);
        assert_eq!(ask(json!({"maxEgressRate": 100_000_000}), "4M").burst, 4_000_000);
        // Beyond what a burst can be (8 Gibit), capped rather than refused.
        assert_eq!(ask(json!({"maxEgressRate": 100_000_000}), "100G").burst, 5_000_000);
        // The operator's burst ceiling replaces the implied one.
        assert_eq!(ask(json!({"maxEgressRate": 100_000_000, "maxEgressBurst": 80_000_000}), "1G").burst, 80_000_000);
        assert_eq!(ask(json!({"maxEgressRate": 100_000_000, "maxEgressBurst": 80_000_000}), "100G").burst, 80_000_000);
        // The operator's own default burst is the operator's choice.
        let c = with(json!({"maxEgressRate": 100_000_000, "defaultEgressBurst": 50_000_000}), json!({"kubernetes.io/egress-bandwidth": "10M"}));
        assert_eq!(resolve(&c, None).unwrap().egress.unwrap().burst, 50_000_000);
        // Recorded for `set`: the implied burst ceiling too.
        let cl = ceilings(&with(json!({"maxEgressRate": 100_000_000}), json!({})), None).unwrap();
        assert_eq!((cl.egress_rate, cl.egress_burst, cl.ingress_burst), (Some(100_000_000), Some(5_000_000), None));
        // Without any ceiling, the pod's burst stands, up to MAX_BURST.
        assert_eq!(ask(json!({}), "1G").burst, 1_000_000_000);
    }

    #[test]
    fn requests_out_of_range_are_capped_where_a_ceiling_applies() {
        // containerd accepts 1T; under a 100M ceiling the pod gets 100M.
        for (policy, want) in [(json!({"maxEgressRate": 100_000_000}), 100_000_000), (json!({"egressRate": 10_000_000}), 10_000_000)] {
            let c = with(policy, json!({"kubernetes.io/egress-bandwidth": "1T"}));
            assert_eq!(rate(resolve(&c, None).unwrap().egress), Some(want));
        }
        // Below the minimum no ceiling helps; without a ceiling 1T is refused.
        let e = resolve(&with(json!({"maxEgressRate": 100_000_000}), json!({"kubernetes.io/egress-bandwidth": "1k"})), None).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = resolve(&with(json!({}), json!({"kubernetes.io/egress-bandwidth": "1T"})), None).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    #[test]
    fn max_burst_applies_to_every_path() {
        // Default bursts at high rates.
        assert_eq!(default_burst(Direction::Ingress, MAX_RATE), MAX_BURST);
        let c = with(json!({}), json!({"kubernetes.io/ingress-bandwidth": "100G"}));
        assert_eq!(resolve(&c, None).unwrap().ingress.unwrap().burst, MAX_BURST);
        // An operator's burst above it is refused, naming the key.
        let c = with(json!({"egressRate": 10_000_000, "defaultEgressBurst": MAX_BURST + 1}), json!({}));
        assert!(resolve(&c, None).unwrap_err().msg.contains("defaultEgressBurst"));
    }

    #[test]
    fn the_example_conflists_resolve_as_the_readme_says() {
        let list: serde_json::Value = serde_json::from_str(include_str!("../conflist/30-bridge-bpf-ratelimit-ceilings.conflist")).unwrap();
        let mut entry = list["plugins"].as_array().unwrap().iter().find(|p| p["type"] == "bpf-ratelimit").unwrap().clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        entry["name"] = list["name"].clone();
        let ask = |ann: serde_json::Value, ns: &str| {
            let mut e = entry.clone();
            e["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": ann});
            resolve(&NetConf::parse(e.to_string().as_bytes()).unwrap(), Some(ns)).unwrap()
        };
        assert_eq!(rate(ask(json!({}), "default").ingress), Some(10_000_000));
        assert_eq!(rate(ask(json!({"kubernetes.io/egress-bandwidth": "5M"}), "default").egress), Some(5_000_000));
        assert_eq!(rate(ask(json!({"kubernetes.io/egress-bandwidth": "10G"}), "default").egress), Some(100_000_000));
        assert_eq!(rate(ask(json!({"kubernetes.io/egress-bandwidth": "10G"}), "batch").egress), Some(1_000_000_000));
    }
}
