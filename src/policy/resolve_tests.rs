//! Limits resolved from whole network configurations, as ADD parses them.

use crate::policy::limits::*;
use crate::policy::netconf::NetConf;
use crate::cni::CniError;

/// The limits ADD would give a pod in `namespace` under `conf`.
fn resolve(conf: &NetConf, namespace: Option<&str>) -> Result<Limits, CniError> {
    crate::policy::resolve::resolve(&conf.pod_request(namespace))
}
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
    let cl = crate::policy::resolve::ceilings(&quiet.policy_for(Some("gold")));
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
    // Outside what kubelet accepts (1k to 1P).
    for bad in ["999", "2P"] {
        let e = resolve(&with(json!({}), json!({"kubernetes.io/ingress-bandwidth": bad})), None).unwrap_err();
        assert!(e.msg.contains("between") && e.msg.contains("1k to 1P"), "{bad}: {e}");
        assert_eq!(e.code, code::INVALID_CONFIG);
    }
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
    let cl = crate::policy::resolve::ceilings(&with(json!({"maxEgressRate": 100_000_000}), json!({})).policy);
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
    // What kubelet accepts but the datapath cannot enforce exactly is
    // clamped to the nearest rate it can, and noted.
    for (ask, want) in [("1k", 8_000), ("1T", 100_000_000_000), ("1P", 100_000_000_000), ("8k", 8_000), ("100G", 100_000_000_000)] {
        let mut notes = Vec::new();
        let c = with(json!({}), json!({"kubernetes.io/egress-bandwidth": ask}));
        let l = crate::policy::resolve::resolve_noting(&c.pod_request(None), &mut notes).unwrap();
        assert_eq!(rate(l.egress), Some(want), "{ask}");
        assert_eq!(notes.len(), usize::from(!["8k", "100G"].contains(&ask)), "{ask}: {notes:?}");
        if let Some(n) = notes.first() {
            assert!(n.contains("clamped to") && n.contains("egress"), "{n}");
        }
    }
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
    let list: serde_json::Value = serde_json::from_str(include_str!("../../conflist/30-bridge-bpf-ratelimit-ceilings.conflist")).unwrap();
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
