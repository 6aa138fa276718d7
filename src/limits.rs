//! Which limits a pod gets, merged field by field from three sources, lowest
//! precedence first:
//!
//! 1. the plugin config's top-level `ingressRate`/`ingressBurst`/`egressRate`/`egressBurst`;
//! 2. `runtimeConfig.bandwidth` (what the runtime derived from the pod);
//! 3. the pod's annotations: `kubernetes.io/{ingress,egress}-bandwidth`,
//!    `bpf-ratelimit.io/{ingress,egress}-burst`, and the prototype's
//!    `rate: "<N>M"` (ingress, below `kubernetes.io/ingress-bandwidth`).
//!
//! Rates are bits/s and bursts bits, as in the reference bandwidth plugin.

use crate::cni::{truncate, CniError};
use crate::netconf::{BandwidthKeys, NetConf};
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
/// Ingress is a policer: it can only drop. A sender at in-cluster RTTs is
/// never slowed by its window, so after a drop storm it recovers by
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
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
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
}

pub fn default_burst(direction: Direction, rate: u64) -> u64 {
    let (ms, min_bytes) = match direction {
        Direction::Ingress => (INGRESS_BURST_MS, INGRESS_BURST_MIN_BYTES),
        Direction::Egress => (EGRESS_BURST_MS, EGRESS_BURST_MIN_BYTES),
    };
    (rate / 1000 * ms).max(min_bytes * 8)
}

/// A value and where it came from, for error messages.
struct Sourced {
    value: u64,
    source: String,
}

pub fn resolve(conf: &NetConf) -> Result<Limits, CniError> {
    Ok(Limits {
        ingress: resolve_direction(conf, Direction::Ingress)?,
        egress: resolve_direction(conf, Direction::Egress)?,
    })
}

fn resolve_direction(conf: &NetConf, dir: Direction) -> Result<Option<Limit>, CniError> {
    let pick = |k: &BandwidthKeys| match dir {
        Direction::Ingress => (k.ingress_rate, k.ingress_burst),
        Direction::Egress => (k.egress_rate, k.egress_burst),
    };
    let (default_rate, default_burst_key) = pick(&conf.defaults);
    let (rt_rate, rt_burst) = pick(&conf.runtime_bandwidth);
    let (rate_key, burst_key) = match dir {
        Direction::Ingress => ("ingressRate", "ingressBurst"),
        Direction::Egress => ("egressRate", "egressBurst"),
    };

    let mut rate: Option<Sourced> = None;
    let mut burst: Option<Sourced> = None;
    let set = |slot: &mut Option<Sourced>, v: Option<u64>, source: String| {
        if let Some(value) = v {
            *slot = Some(Sourced { value, source });
        }
    };
    set(&mut rate, default_rate, format!("{rate_key} in the plugin config"));
    set(&mut burst, default_burst_key.filter(|b| !is_sentinel(*b)), format!("{burst_key} in the plugin config"));
    // containerd sends 0 for a direction the pod did not annotate; that must
    // not erase the plugin's own default.
    set(&mut rate, rt_rate.filter(|r| *r != 0), format!("{rate_key} in runtimeConfig.bandwidth"));
    set(&mut burst, rt_burst.filter(|b| *b != 0 && !is_sentinel(*b)), format!("{burst_key} in runtimeConfig.bandwidth"));

    let ann = &conf.pod_annotations;
    if dir == Direction::Ingress {
        if let Some(v) = ann.get(PROTOTYPE_RATE) {
            set(&mut rate, Some(prototype_rate(v)?), format!("pod annotation {PROTOTYPE_RATE:?}"));
        }
    }
    let (bw_ann, burst_ann) = match dir {
        Direction::Ingress => (INGRESS_BANDWIDTH, INGRESS_BURST),
        Direction::Egress => (EGRESS_BANDWIDTH, EGRESS_BURST),
    };
    for (name, slot) in [(bw_ann, &mut rate), (burst_ann, &mut burst)] {
        if let Some(v) = ann.get(name) {
            let value = quantity::parse(v)
                .map_err(|e| CniError::config(format!("invalid pod annotation {name:?}: {e}")))?;
            set(slot, Some(value), format!("pod annotation {name:?}"));
        }
    }

    let Some(rate) = rate.filter(|r| r.value != 0) else {
        return Ok(None);
    };
    if !(MIN_RATE..=MAX_RATE).contains(&rate.value) {
        return Err(CniError::config(format!(
            "{} is {} bits/s; a {} rate must be between {} and {} bits/s (8k to 100G)",
            rate.source,
            rate.value,
            dir.name(),
            MIN_RATE,
            MAX_RATE
        )));
    }
    let burst = match burst.filter(|b| b.value != 0) {
        Some(b) if b.value > MAX_BURST => {
            return Err(CniError::config(format!(
                "{} is {} bits; a burst can be at most {} bits (1 GiB)",
                b.source, b.value, MAX_BURST
            )))
        }
        Some(b) => b.value,
        None => default_burst(dir, rate.value),
    };
    Ok(Some(Limit { rate: rate.value, burst }))
}

fn is_sentinel(burst: u64) -> bool {
    BURST_SENTINELS.contains(&burst)
}

/// The prototype's annotation: `rate: "<N>M"`, N Mbit/s (N may be fractional).
fn prototype_rate(v: &str) -> Result<u64, CniError> {
    let err = || {
        CniError::config(format!(
            "invalid pod annotation \"rate\": {:?} is not \"<N>M\" (N Mbit/s, e.g. \"10M\")",
            truncate(v, 40)
        ))
    };
    let n = v.trim().strip_suffix('M').ok_or_else(err)?;
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    quantity::parse(&format!("{n}M")).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::code;

    fn conf(v: serde_json::Value) -> NetConf {
        let mut obj = serde_json::json!({"cniVersion": "1.0.0", "name": "t", "type": "bpf-ratelimit"});
        obj.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        NetConf::parse(obj.to_string().as_bytes()).unwrap()
    }

    fn with_annotations(ann: serde_json::Value) -> NetConf {
        conf(serde_json::json!({"runtimeConfig": {"io.kubernetes.cri.pod-annotations": ann}}))
    }

    #[test]
    fn nothing_set_means_no_limits() {
        assert!(resolve(&conf(serde_json::json!({}))).unwrap().is_empty());
        let zero = conf(serde_json::json!({"runtimeConfig": {"bandwidth": {"ingressRate": 0, "egressRate": 0}}}));
        assert!(resolve(&zero).unwrap().is_empty());
    }

    #[test]
    fn precedence_defaults_then_runtime_then_annotations() {
        let c = conf(serde_json::json!({
            "ingressRate": 1_000_000, "ingressBurst": 80_000, "egressRate": 2_000_000,
            "runtimeConfig": {
                "bandwidth": {"IngressRate": 10_000_000, "IngressBurst": 4_294_967_295u64},
                "io.kubernetes.cri.pod-annotations": {
                    "kubernetes.io/egress-bandwidth": "20M",
                    "bpf-ratelimit.io/egress-burst": "1Mi"
                }
            }
        }));
        let l = resolve(&c).unwrap();
        // runtime rate beats the default; the sentinel burst leaves the default's burst.
        assert_eq!(l.ingress, Some(Limit { rate: 10_000_000, burst: 80_000 }));
        assert_eq!(l.egress, Some(Limit { rate: 20_000_000, burst: 1 << 20 }));
    }

    #[test]
    fn runtime_zero_keeps_the_plugin_default() {
        let c = conf(serde_json::json!({"egressRate": 5_000_000, "runtimeConfig": {"bandwidth": {
            "IngressRate": 10_000_000, "IngressBurst": 0, "EgressRate": 0, "EgressBurst": 0}}}));
        let l = resolve(&c).unwrap();
        assert_eq!(l.egress.unwrap().rate, 5_000_000);
        assert_eq!(l.ingress.unwrap().burst, default_burst(Direction::Ingress, 10_000_000));
    }

    #[test]
    fn sentinels_mean_default_burst() {
        for sentinel in BURST_SENTINELS {
            let c = conf(serde_json::json!({"runtimeConfig": {"bandwidth": {
                "egressRate": 100_000_000, "egressBurst": sentinel}}}));
            let l = resolve(&c).unwrap();
            assert_eq!(l.egress.unwrap().burst, default_burst(Direction::Egress, 100_000_000));
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
    fn annotations_are_quantities() {
        let l = resolve(&with_annotations(serde_json::json!({
            "kubernetes.io/ingress-bandwidth": "2.5M", "kubernetes.io/egress-bandwidth": "1Gi"
        })))
        .unwrap();
        assert_eq!(l.ingress.unwrap().rate, 2_500_000);
        assert_eq!(l.egress.unwrap().rate, 1 << 30);
    }

    #[test]
    fn prototype_rate_is_ingress_mbit_and_yields_to_kubernetes_annotation() {
        let l = resolve(&with_annotations(serde_json::json!({"rate": "5M"}))).unwrap();
        assert_eq!(l.ingress.unwrap().rate, 5_000_000);
        assert!(l.egress.is_none());
        let l = resolve(&with_annotations(serde_json::json!({
            "rate": "5M", "kubernetes.io/ingress-bandwidth": "7M"}))).unwrap();
        assert_eq!(l.ingress.unwrap().rate, 7_000_000);
    }

    #[test]
    fn invalid_annotations_name_the_annotation() {
        for (k, v) in [("rate", "fast"), ("rate", "10"), ("bpf-ratelimit.io/ingress-burst", "lots"),
                       ("kubernetes.io/egress-bandwidth", "-1M")] {
            let e = resolve(&with_annotations(serde_json::json!({k: v}))).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.contains(k), "{e}");
        }
    }

    #[test]
    fn out_of_range_rates_and_bursts_are_refused() {
        let e = resolve(&with_annotations(serde_json::json!({"kubernetes.io/ingress-bandwidth": "1k"}))).unwrap_err();
        assert!(e.msg.contains("between"), "{e}");
        let e = resolve(&with_annotations(serde_json::json!({"kubernetes.io/ingress-bandwidth": "1T"}))).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = resolve(&with_annotations(serde_json::json!({
            "kubernetes.io/ingress-bandwidth": "10M", "bpf-ratelimit.io/ingress-burst": "100G"}))).unwrap_err();
        assert!(e.msg.contains("at most"), "{e}");
    }
}
