//! The network configuration on stdin: our plugin's keys, runtimeConfig
//! (bandwidth, cgroupPath, pod annotations) and prevResult, read leniently
//! where runtimes differ (key case) and strictly where values matter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::cni::{self, truncate, CniError};
use crate::policy::operator::{BandwidthKeys, DirectionPolicy, LimitBasis, Policy};
use crate::policy::resolve::PodRequest;

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/bpf-ratelimit";
pub const POD_ANNOTATIONS_KEY: &str = "io.kubernetes.cri.pod-annotations";

/// What ADD does when the datapath cannot be set up for a pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The pod does not start (ADD fails; a held lock is "try again later").
    /// Operator limits stay a security boundary.
    #[default]
    Closed,
    /// The pod starts unshaped: ADD passes prevResult on, logs at error and
    /// records why (`list`, `metrics`); STATUS never fails the node.
    Open,
}

/// What the ingress queue's depth favours below 40M (from 40M on it is
/// always 8 ms: ebpf/shaper.h, rwnd_for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IngressTradeoff {
    /// Receive windows keep 2 ms of queue: a pod's other traffic waits
    /// least behind its downloads.
    #[default]
    Latency,
    /// 8 ms at every rate: fewer, larger skbs, less CPU per byte on a
    /// node where many pods download at once.
    Cpu,
}

/// Bounds of `lockTimeoutSeconds`.
const LOCK_TIMEOUT_RANGE: (f64, f64) = (0.1, 600.0);

#[derive(Debug, Clone, Default)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub cgroup_root: Option<PathBuf>,
    pub pin_root: PathBuf,
    /// `allowRawSockets`: let AF_PACKET sockets send, unshaped. Off by default.
    pub allow_raw_sockets: bool,
    /// `ingressQueue`: queue ingress on the pod's host-side interface where
    /// there is one (default), rather than police it.
    pub ingress_queue: bool,
    /// `ingressTradeoff`: what the ingress queue's depth favours.
    pub ingress_tradeoff: IngressTradeoff,
    /// `limitBasis`: what a limit counts (frames on the wire, or frames
    /// scaled so that bulk TCP goodput meets it).
    pub limit_basis: LimitBasis,
    /// `failurePolicy`: what ADD does when it cannot set the datapath up.
    pub failure_policy: FailurePolicy,
    /// `lockTimeoutSeconds`: how long a command waits for another one's
    /// lock on the pin root before it answers "try again later".
    pub lock_timeout: std::time::Duration,
    /// The operator's limits at the top level of the config.
    pub policy: Policy,
    /// `namespaces`: per-namespace overrides of `policy`, by K8S_POD_NAMESPACE.
    pub namespaces: BTreeMap<String, Policy>,
    /// runtimeConfig.bandwidth, from the runtime (the bandwidth capability).
    pub runtime_bandwidth: BandwidthKeys,
    /// runtimeConfig.cgroupPath (the cgroupPath capability).
    pub cgroup_path: Option<String>,
    /// runtimeConfig["io.kubernetes.cri.pod-annotations"].
    pub pod_annotations: BTreeMap<String, String>,
    /// prevResult, kept as raw JSON so every key survives.
    pub prev_result: Option<Value>,
    /// GC: cni.dev/valid-attachments as (containerID, ifname).
    pub valid_attachments: Option<BTreeSet<(String, String)>>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(cni::code::DECODE, "cannot decode the network configuration on stdin", e.to_string())
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(cni::code::DECODE, "the network configuration is not a JSON object", ""));
        };
        let mut conf = NetConf {
            cni_version: string_field(&obj, "cniVersion")?.unwrap_or_default(),
            name: string_field(&obj, "name")?.unwrap_or_default(),
            log_file: string_field(&obj, "logFile")?.map(PathBuf::from),
            log_level: string_field(&obj, "logLevel")?,
            cgroup_root: string_field(&obj, "cgroupRoot")?.map(PathBuf::from),
            pin_root: string_field(&obj, "pinRoot")?
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT)),
            allow_raw_sockets: bool_field(&obj, "allowRawSockets")?.unwrap_or(false),
            ingress_queue: bool_field(&obj, "ingressQueue")?.unwrap_or(true),
            ingress_tradeoff: choice(
                &obj,
                "ingressTradeoff",
                &[
                    ("latency", IngressTradeoff::Latency, "downloads below 40M keep 2 ms of queue"),
                    ("cpu", IngressTradeoff::Cpu, "8 ms at every rate: less CPU on a busy node, more wait for the pod's other traffic"),
                ],
            )?,
            limit_basis: match string_field(&obj, "limitBasis")? {
                None => LimitBasis::default(),
                Some(b) => LimitBasis::parse(&b).ok_or_else(|| {
                    CniError::config(format!(
                        "limitBasis must be \"frames\" (every frame on the wire, as tc counts) or \"tcp-goodput\" (frames scaled so bulk TCP payload meets the limit), got {:?}",
                        truncate(&b, 40)
                    ))
                })?,
            },
            failure_policy: choice(
                &obj,
                "failurePolicy",
                &[
                    ("closed", FailurePolicy::Closed, "a pod whose shaper cannot be set up does not start"),
                    ("open", FailurePolicy::Open, "it starts unshaped"),
                ],
            )?,
            lock_timeout: match obj.get("lockTimeoutSeconds").filter(|v| !v.is_null()) {
                None => crate::node::pins::DEFAULT_LOCK_TIMEOUT,
                Some(v) => match v.as_f64() {
                    Some(secs) if (LOCK_TIMEOUT_RANGE.0..=LOCK_TIMEOUT_RANGE.1).contains(&secs) => std::time::Duration::from_secs_f64(secs),
                    _ => {
                        return Err(CniError::config(format!(
                            "lockTimeoutSeconds must be a number of seconds from {} to {}, got {}",
                            LOCK_TIMEOUT_RANGE.0,
                            LOCK_TIMEOUT_RANGE.1,
                            truncate(&v.to_string(), 40)
                        )))
                    }
                },
            },
            policy: policy(&obj, "the plugin config")?,
            prev_result: obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
            ..Default::default()
        };
        if let Some(ns) = obj.get("namespaces").filter(|v| !v.is_null()) {
            let Value::Object(ns) = ns else {
                return Err(CniError::config("namespaces must be an object of namespace name to limits"));
            };
            for (name, v) in ns {
                let Value::Object(keys) = v else {
                    return Err(CniError::config(format!("namespaces[{:?}] must be an object", truncate(name, 63))));
                };
                let source = format!("namespaces[{:?}]", truncate(name, 63));
                conf.namespaces.insert(name.clone(), policy(keys, &source)?);
            }
        }
        if conf.cni_version.is_empty() {
            return Err(CniError::config("cniVersion is missing from the network configuration"));
        }
        if !cni::is_supported_version(&conf.cni_version) {
            return Err(CniError::new(
                cni::code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported; this plugin supports {}",
                    truncate(&conf.cni_version, 20),
                    cni::SUPPORTED_VERSIONS.join(", ")
                ),
                "",
            ));
        }
        validate_network_name(&conf.name)?;
        let node_wide = BandwidthKeys {
            ingress_rate: conf.policy.ingress.rate,
            ingress_burst: conf.policy.ingress.burst,
            egress_rate: conf.policy.egress.rate,
            egress_burst: conf.policy.egress.burst,
        };
        validate_burst_has_rate(&node_wide, "the plugin config")?;
        validate_root_path("pinRoot", &conf.pin_root)?;
        if let Some(root) = &conf.cgroup_root {
            validate_root_path("cgroupRoot", root)?;
        }
        if let Some(rc) = obj.get("runtimeConfig").filter(|v| !v.is_null()) {
            let Value::Object(rc) = rc else {
                return Err(CniError::config("runtimeConfig is not an object"));
            };
            if let Some(bw) = get_ci(rc, "bandwidth").filter(|v| !v.is_null()) {
                let Value::Object(bw) = bw else {
                    return Err(CniError::config("runtimeConfig.bandwidth is not an object"));
                };
                conf.runtime_bandwidth = bandwidth_keys(bw, "runtimeConfig.bandwidth")?;
                validate_burst_has_rate(&conf.runtime_bandwidth, "runtimeConfig.bandwidth")?;
            }
            conf.cgroup_path = string_field(rc, "cgroupPath")?.filter(|s| !s.is_empty());
            if let Some(ann) = rc.get(POD_ANNOTATIONS_KEY).filter(|v| !v.is_null()) {
                let Value::Object(ann) = ann else {
                    return Err(CniError::config(format!("runtimeConfig[{POD_ANNOTATIONS_KEY:?}] is not an object")));
                };
                for (k, v) in ann {
                    // Other tools' annotations may hold anything; keep only strings.
                    if let Value::String(s) = v {
                        conf.pod_annotations.insert(k.clone(), s.clone());
                    }
                }
            }
        }
        if let Some(valid) = obj.get("cni.dev/valid-attachments").filter(|v| !v.is_null()) {
            conf.valid_attachments = Some(parse_valid_attachments(valid)?);
        }
        Ok(conf)
    }
}

/// A burst without a rate in the same source is an error, as in the
/// reference bandwidth plugin ("if burst is set, rate must also be set").
/// The runtimes' "no burst given" values are not a burst.
pub fn validate_burst_has_rate(keys: &BandwidthKeys, source: &str) -> Result<(), CniError> {
    let given = |b: Option<u64>| b.is_some_and(|b| b != 0 && !crate::policy::limits::BURST_SENTINELS.contains(&b));
    for (dir, rate, burst) in [("ingress", keys.ingress_rate, keys.ingress_burst), ("egress", keys.egress_rate, keys.egress_burst)] {
        if given(burst) && rate.unwrap_or(0) == 0 {
            return Err(CniError::config(format!("{dir}Burst in {source} is set without {dir}Rate: if burst is set, rate must also be set")));
        }
    }
    Ok(())
}

fn validate_root_path(key: &str, p: &std::path::Path) -> Result<(), CniError> {
    if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(CniError::config(format!("{key} must be an absolute path without '..', got {p:?}")));
    }
    Ok(())
}

/// The network name becomes a pin directory name: the spec's alphabet only.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    // The spec's ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$: a first character that is
    // not '.' keeps "." and ".." (path components) out.
    let ok = name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(CniError::config(format!(
            "invalid network name {:?}: 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit",
            truncate(name, 40)
        )));
    }
    Ok(())
}

impl NetConf {
    /// For DEL, which must not fail on keys it does not need: only
    /// cniVersion, name and pinRoot are read, each falling back to a default.
    pub fn parse_for_del(stdin: &[u8]) -> Result<Self, CniError> {
        if let Ok(conf) = Self::parse(stdin) {
            return Ok(conf);
        }
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(cni::code::DECODE, "cannot decode the network configuration on stdin", e.to_string())
        })?;
        let text = |k: &str| value.get(k).and_then(Value::as_str).map(String::from);
        let name = text("name").unwrap_or_default();
        validate_network_name(&name)?;
        let pin_root = text("pinRoot").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_ROOT));
        validate_root_path("pinRoot", &pin_root)?;
        Ok(NetConf {
            cni_version: text("cniVersion").filter(|v| cni::is_supported_version(v)).unwrap_or_else(|| cni::DEFAULT_VERSION.into()),
            name,
            pin_root,
            ..Default::default()
        })
    }
}

/// Looks a key up case-insensitively: containerd writes `IngressRate`, the
/// reference plugin documents `ingressRate`.
fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// A key with named values: its value among `choices` (name, value, what it
/// means), the type's default when absent; any other value is an error
/// that names every choice.
fn choice<T: Copy + Default>(obj: &Map<String, Value>, key: &str, choices: &[(&str, T, &str)]) -> Result<T, CniError> {
    let Some(given) = string_field(obj, key)? else { return Ok(T::default()) };
    choices.iter().find(|(name, _, _)| *name == given).map(|(_, value, _)| *value).ok_or_else(|| {
        let named: Vec<String> = choices.iter().map(|(name, _, meaning)| format!("\"{name}\" ({meaning})")).collect();
        CniError::config(format!("{key} must be {}, got {:?}", named.join(" or "), truncate(&given, 40)))
    })
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::config(format!("{key} must be a string, got {other}"))),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(CniError::config(format!("{key} must be true or false, got {}", truncate(&other.to_string(), 40)))),
    }
}

/// A bits or bits/s number under `key`, matched case-insensitively.
fn number(obj: &Map<String, Value>, key: &str, source: &str) -> Result<Option<u64>, CniError> {
    match get_ci(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19).map(|f| f as u64))
            .map(Some)
            .ok_or_else(|| CniError::config(format!("{key} in {source} must be a non-negative whole number, got {n}"))),
        Some(other) => Err(CniError::config(format!(
            "{key} in {source} must be a number (bits/s for rates, bits for bursts), got {}",
            truncate(&other.to_string(), 40)
        ))),
    }
}

/// The operator's keys: `ingressRate`, `defaultIngressRate`, `maxIngressRate`
/// and the same for bursts and for egress.
fn policy(obj: &Map<String, Value>, source: &str) -> Result<Policy, CniError> {
    let direction = |dir: &str, capitalised: &str| -> Result<DirectionPolicy, CniError> {
        Ok(DirectionPolicy {
            rate: number(obj, &format!("{dir}Rate"), source)?,
            burst: number(obj, &format!("{dir}Burst"), source)?,
            default_rate: number(obj, &format!("default{capitalised}Rate"), source)?,
            default_burst: number(obj, &format!("default{capitalised}Burst"), source)?,
            max_rate: number(obj, &format!("max{capitalised}Rate"), source)?,
            max_burst: number(obj, &format!("max{capitalised}Burst"), source)?,
        })
    };
    Ok(Policy { ingress: direction("ingress", "Ingress")?, egress: direction("egress", "Egress")? })
}

impl NetConf {
    /// The operator's limits for a pod in `namespace`: the top-level keys,
    /// overridden by that namespace's entry in `namespaces`.
    pub fn policy_for(&self, namespace: Option<&str>) -> Policy {
        match namespace.and_then(|ns| self.namespaces.get(ns)) {
            Some(over) => self.policy.overlaid(*over),
            None => self.policy,
        }
    }

    /// What a pod in `namespace` is given and asks for: the input of
    /// `resolve::limits`.
    pub fn pod_request(&self, namespace: Option<&str>) -> PodRequest<'_> {
        PodRequest {
            policy: self.policy_for(namespace),
            overriding_namespace: namespace.filter(|ns| self.namespaces.contains_key(*ns)).map(str::to_string),
            runtime_bandwidth: self.runtime_bandwidth,
            annotations: &self.pod_annotations,
        }
    }
}

fn bandwidth_keys(obj: &Map<String, Value>, source: &str) -> Result<BandwidthKeys, CniError> {
    let num = |key: &str| number(obj, key, source);
    Ok(BandwidthKeys {
        ingress_rate: num("ingressRate")?,
        ingress_burst: num("ingressBurst")?,
        egress_rate: num("egressRate")?,
        egress_burst: num("egressBurst")?,
    })
}

fn parse_valid_attachments(v: &Value) -> Result<BTreeSet<(String, String)>, CniError> {
    let bad = || CniError::config("cni.dev/valid-attachments must be a list of {containerID, ifname} objects");
    let list = v.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|item| {
            let id = item.get("containerID").and_then(Value::as_str).ok_or_else(bad)?;
            let ifname = item.get("ifname").and_then(Value::as_str).ok_or_else(bad)?;
            Ok((id.to_string(), ifname.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    /// The network name is a directory name under the pin root and /run:
    /// "." and ".." (and anything not starting with a letter or digit) are
    /// refused, for DEL's lenient parse too.
    #[test]
    fn a_network_name_that_is_a_path_component_is_refused() {
        for bad in [".", "..", "-x", "_x", ".hidden"] {
            let conf = serde_json::json!({"cniVersion": "1.0.0", "name": bad});
            assert_eq!(parse(conf.clone()).unwrap_err().code, cni::code::INVALID_CONFIG, "{bad:?}");
            assert_eq!(NetConf::parse_for_del(conf.to_string().as_bytes()).unwrap_err().code, cni::code::INVALID_CONFIG, "{bad:?}");
        }
        assert!(parse(serde_json::json!({"cniVersion": "1.0.0", "name": "k8s-pod-network.v2"})).is_ok());
    }

    #[test]
    fn failure_policy_and_lock_timeout_are_read_and_checked() {
        let base = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"cniVersion": "1.0.0", "name": "n"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            parse(v)
        };
        let c = base(serde_json::json!({})).unwrap();
        assert_eq!((c.failure_policy, c.lock_timeout), (FailurePolicy::Closed, crate::node::pins::DEFAULT_LOCK_TIMEOUT));
        let c = base(serde_json::json!({"failurePolicy": "open", "lockTimeoutSeconds": 2.5})).unwrap();
        assert_eq!((c.failure_policy, c.lock_timeout), (FailurePolicy::Open, std::time::Duration::from_millis(2500)));
        for bad in [serde_json::json!({"failurePolicy": "maybe"}), serde_json::json!({"lockTimeoutSeconds": 0}), serde_json::json!({"lockTimeoutSeconds": "5"})] {
            let e = base(bad.clone()).unwrap_err();
            assert_eq!(e.code, cni::code::INVALID_CONFIG, "{bad}");
            assert!(e.msg.contains("failurePolicy") || e.msg.contains("lockTimeoutSeconds"), "{}", e.msg);
        }
    }

    #[test]
    fn keys_with_named_values_default_and_name_every_choice_when_wrong() {
        let with = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"cniVersion": "1.0.0", "name": "n"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            parse(v)
        };
        let c = with(serde_json::json!({})).unwrap();
        assert_eq!((c.ingress_tradeoff, c.failure_policy), (IngressTradeoff::Latency, FailurePolicy::Closed));
        let c = with(serde_json::json!({"ingressTradeoff": "cpu"})).unwrap();
        assert_eq!(c.ingress_tradeoff, IngressTradeoff::Cpu);
        let e = with(serde_json::json!({"ingressTradeoff": "fast"})).unwrap_err();
        assert_eq!(e.code, cni::code::INVALID_CONFIG);
        assert!(e.msg.starts_with("ingressTradeoff must be \"latency\" (") && e.msg.contains(") or \"cpu\" (") && e.msg.ends_with("got \"fast\""), "{}", e.msg);
        let e = with(serde_json::json!({"failurePolicy": "maybe"})).unwrap_err();
        assert_eq!(
            e.msg,
            "failurePolicy must be \"closed\" (a pod whose shaper cannot be set up does not start) or \"open\" (it starts unshaped), got \"maybe\""
        );
    }

    #[test]
    fn reads_all_sources_and_keeps_prev_result_raw() {
        let c = parse(serde_json::json!({
            "cniVersion": "1.0.0", "name": "n", "type": "bpf-ratelimit",
            "ingressRate": 1000000, "egressRate": 3000000, "egressBurst": 2000,
            "runtimeConfig": {
                "bandwidth": {"IngressRate": 10000000, "IngressBurst": 4294967295u64, "egressRate": 5000000},
                "cgroupPath": "/kubepods/pod1",
                "io.kubernetes.cri.pod-annotations": {"rate": "5M", "other": 1}
            },
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "custom": true}]}
        }))
        .unwrap();
        assert_eq!(c.policy.ingress.rate, Some(1_000_000));
        assert_eq!(c.policy.egress.burst, Some(2000));
        assert_eq!(c.runtime_bandwidth.ingress_rate, Some(10_000_000));
        assert_eq!(c.runtime_bandwidth.ingress_burst, Some(4294967295));
        assert_eq!(c.runtime_bandwidth.egress_rate, Some(5_000_000));
        assert_eq!(c.cgroup_path.as_deref(), Some("/kubepods/pod1"));
        assert_eq!(c.pod_annotations.get("rate").map(String::as_str), Some("5M"));
        assert!(!c.pod_annotations.contains_key("other"));
        assert_eq!(c.prev_result.unwrap()["interfaces"][0]["custom"], true);
        assert_eq!(c.pin_root, PathBuf::from(DEFAULT_PIN_ROOT));
    }

    #[test]
    fn decoding_and_config_errors_have_spec_codes() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, cni::code::DECODE);
        let e = parse(serde_json::json!({"cniVersion": "1.0.0", "name": "../x"})).unwrap_err();
        assert_eq!(e.code, cni::code::INVALID_CONFIG);
        assert_eq!(NetConf::parse(b"[1]").unwrap_err().code, cni::code::DECODE);
        assert_eq!(parse(serde_json::json!({"name": "x"})).unwrap_err().code, cni::code::INVALID_CONFIG);
        assert_eq!(parse(serde_json::json!({"cniVersion": "1.0.0"})).unwrap_err().code, cni::code::INVALID_CONFIG);
        assert_eq!(
            parse(serde_json::json!({"cniVersion": "0.2.0"})).unwrap_err().code,
            cni::code::INCOMPATIBLE_VERSION
        );
        let e = parse(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "ingressRate": "10M"})).unwrap_err();
        assert_eq!(e.code, cni::code::INVALID_CONFIG);
        assert!(e.msg.contains("ingressRate"), "{e}");
        let e = parse(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "egressRate": -5})).unwrap_err();
        assert_eq!(e.code, cni::code::INVALID_CONFIG);
        let e = parse(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "pinRoot": "/sys/fs/bpf/../../etc"})).unwrap_err();
        assert_eq!(e.code, cni::code::INVALID_CONFIG);
        let e = parse(serde_json::json!({"cniVersion": "1.0.0", "name": "n", "pinRoot": "relative"})).unwrap_err();
        assert_eq!(e.code, cni::code::INVALID_CONFIG);
    }

    #[test]
    fn del_reads_only_what_it_needs() {
        let bad = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "ingressRate": "garbage",
                                     "pinRoot": "/sys/fs/bpf/x"});
        assert!(NetConf::parse(bad.to_string().as_bytes()).is_err());
        let c = NetConf::parse_for_del(bad.to_string().as_bytes()).unwrap();
        assert_eq!(c.pin_root, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(c.name, "n");
    }

    #[test]
    fn valid_attachments_parse() {
        let c = parse(serde_json::json!({
            "cniVersion": "1.1.0", "name": "n",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]
        }))
        .unwrap();
        assert!(c.valid_attachments.unwrap().contains(&("a".into(), "eth0".into())));
        let e = parse(serde_json::json!({"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": [{"x": 1}]}));
        assert_eq!(e.unwrap_err().code, cni::code::INVALID_CONFIG);
    }
}
