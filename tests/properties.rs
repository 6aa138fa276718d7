//! Property tests (proptest) over quantity parsing and config parsing and
//! merging. Unprivileged and bounded: 256 cases per property, well under a
//! second each in release mode.

use bpf_ratelimit::cni::code;
use bpf_ratelimit::policy::limits::{self, MAX_RATE, MIN_RATE};
use bpf_ratelimit::policy::resolve;
use bpf_ratelimit::policy::netconf::NetConf;
use bpf_ratelimit::policy::quantity;
use proptest::prelude::*;
use serde_json::{json, Value};

const SUFFIXES: [(&str, u128); 13] = [
    ("", 1),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
];

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    /// Whole numbers with any suffix parse exactly, or fail as too large.
    #[test]
    fn whole_quantities_parse_exactly(n in 0u64..1_000_000_000_000, s in 0usize..SUFFIXES.len()) {
        let (suffix, mult) = SUFFIXES[s];
        let want = u128::from(n) * mult;
        match quantity::parse(&format!("{n}{suffix}")) {
            Ok(v) => prop_assert_eq!(u128::from(v), want),
            Err(e) => {
                prop_assert!(want > u128::from(u64::MAX), "{n}{suffix}: {e}");
                prop_assert!(e.to_string().contains("too large"));
            }
        }
    }

    /// Decimal fractions round up to the next whole unit, never down.
    #[test]
    fn fractions_round_up(int in 0u64..1_000_000, frac in "[0-9]{1,6}", s in 0usize..4) {
        let (suffix, mult) = SUFFIXES[s];
        let den = 10u128.pow(frac.len() as u32);
        let mantissa = u128::from(int) * den + frac.parse::<u128>().unwrap();
        let want = (mantissa * mult).div_ceil(den);
        prop_assert_eq!(u128::from(quantity::parse(&format!("{int}.{frac}{suffix}")).unwrap()), want);
    }

    /// Exponent form equals the plain number.
    #[test]
    fn exponents_scale(n in 0u64..100_000, e in 0u32..9) {
        prop_assert_eq!(quantity::parse(&format!("{n}e{e}")).unwrap(), n * 10u64.pow(e));
    }

    /// Anything else is refused with a message that names the input; never a panic.
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
        if let Err(e) = quantity::parse(&s) {
            prop_assert!(e.to_string().contains("is not a quantity"));
        }
    }

    #[test]
    fn negatives_are_refused(n in 1u64..u64::MAX, s in 0usize..SUFFIXES.len()) {
        let text = format!("-{n}{}", SUFFIXES[s].0);
        prop_assert!(quantity::parse(&text).is_err(), "{} parsed", text);
    }

    /// What format_rate prints for round rates parses back to the same rate.
    #[test]
    fn formatted_rates_parse_back(n in 1u64..1000, k in 0u32..4) {
        let bits = n * 1000u64.pow(k);
        prop_assert_eq!(quantity::parse(&quantity::format_rate(bits)).unwrap(), bits);
    }

    /// Arbitrary bytes on stdin give a config or a CNI error with a spec code.
    #[test]
    fn arbitrary_stdin_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Err(e) = NetConf::parse(&bytes) {
            prop_assert!([code::INCOMPATIBLE_VERSION, code::DECODE, code::INVALID_CONFIG].contains(&e.code), "{e:?}");
        }
    }

    /// Arbitrary JSON values in every key we read: a config or a clean error.
    #[test]
    fn arbitrary_values_in_known_keys_never_panic(values in proptest::collection::vec(json_value(), 8)) {
        let keys = ["name", "pinRoot", "ingressRate", "egressBurst", "runtimeConfig", "prevResult", "cni.dev/valid-attachments", "logLevel"];
        let mut conf = json!({"cniVersion": "1.1.0", "name": "n"});
        for (k, v) in keys.iter().zip(values) {
            conf[*k] = v;
        }
        if let Err(e) = NetConf::parse(conf.to_string().as_bytes()) {
            prop_assert!([code::DECODE, code::INVALID_CONFIG].contains(&e.code), "{e:?}");
        }
    }

    /// The pod's request (annotations over runtimeConfig.bandwidth) applies
    /// within the operator's limit (the plugin config's rate), which is
    /// also the default: never more, never unlimited.
    #[test]
    fn the_pods_request_applies_within_the_operators_limit(
        plugin in proptest::option::of(MIN_RATE..MAX_RATE),
        runtime in proptest::option::of(MIN_RATE..MAX_RATE),
        annotation in proptest::option::of(MIN_RATE..MAX_RATE),
    ) {
        let mut conf = json!({"cniVersion": "1.1.0", "name": "n", "runtimeConfig": {"bandwidth": {}, "io.kubernetes.cri.pod-annotations": {}}});
        if let Some(r) = plugin { conf["egressRate"] = json!(r); }
        if let Some(r) = runtime { conf["runtimeConfig"]["bandwidth"]["EgressRate"] = json!(r); }
        if let Some(r) = annotation {
            conf["runtimeConfig"]["io.kubernetes.cri.pod-annotations"]["kubernetes.io/egress-bandwidth"] = json!(r.to_string());
        }
        let parsed = NetConf::parse(conf.to_string().as_bytes()).unwrap();
        let resolved = resolve::resolve(&parsed.pod_request(None)).unwrap();
        let expected = match (annotation.or(runtime), plugin) {
            (Some(asked), Some(limit)) => Some(asked.min(limit)),
            (asked, limit) => asked.or(limit),
        };
        prop_assert_eq!(resolved.egress.map(|l| l.rate), expected);
        prop_assert_eq!(resolved.ingress, None);
    }

    /// Under a rate ceiling, whatever a pod asks for (any rate from the
    /// minimum up, far beyond what a rate can be, with or without a burst of
    /// any size), ADD succeeds: the pod gets at most the ceiling, a default
    /// burst that follows the rate it gets, and never a burst above the
    /// ceiling's default burst (no burst ceiling is set) nor MAX_BURST.
    #[test]
    fn a_rate_ceiling_bounds_the_rate_and_the_burst_of_any_request(
        ceiling in MIN_RATE..=MAX_RATE,
        asked in MIN_RATE..u64::MAX / 2,
        burst in proptest::option::of(1u64..u64::MAX / 2),
        ingress in any::<bool>(),
    ) {
        let (dir, name) = if ingress { (limits::Direction::Ingress, "ingress") } else { (limits::Direction::Egress, "egress") };
        let mut ann = json!({format!("kubernetes.io/{name}-bandwidth"): asked.to_string()});
        if let Some(b) = burst {
            ann[format!("bpf-ratelimit.io/{name}-burst")] = json!(b.to_string());
        }
        let key = if ingress { "maxIngressRate" } else { "maxEgressRate" };
        let conf = json!({"cniVersion": "1.1.0", "name": "n", key: ceiling, "runtimeConfig": {"io.kubernetes.cri.pod-annotations": ann}});
        let parsed = NetConf::parse(conf.to_string().as_bytes()).unwrap();
        let resolved = resolve::resolve(&parsed.pod_request(None));
        prop_assert!(resolved.is_ok(), "{:?}", resolved);
        let got = resolved.unwrap().get(dir).unwrap();
        prop_assert_eq!(got.rate, asked.min(ceiling));
        prop_assert!(got.burst <= limits::default_burst(dir, ceiling), "burst {} above the ceiling's default", got.burst);
        prop_assert!(got.burst <= limits::MAX_BURST);
        if burst.is_none() {
            prop_assert_eq!(got.burst, limits::default_burst(dir, got.rate));
        }
    }

    /// A burst without a rate in the same source is error 7, as in the
    /// reference plugin; the runtimes' "no burst" values are no burst.
    #[test]
    fn a_burst_without_a_rate_is_error_7(burst in 1u64..1_000_000_000, in_runtime in any::<bool>()) {
        let mut conf = json!({"cniVersion": "1.1.0", "name": "n"});
        if in_runtime {
            conf["runtimeConfig"] = json!({"bandwidth": {"IngressBurst": burst, "IngressRate": 0}});
        } else {
            conf["ingressBurst"] = json!(burst);
        }
        let e = NetConf::parse(conf.to_string().as_bytes()).unwrap_err();
        prop_assert_eq!(e.code, code::INVALID_CONFIG);
        prop_assert!(e.msg.contains("rate must also be set"), "{}", e.msg);
        let sentinel = json!({"cniVersion": "1.1.0", "name": "n", "runtimeConfig": {"bandwidth": {"IngressBurst": 4294967295u64}}});
        prop_assert!(NetConf::parse(sentinel.to_string().as_bytes()).is_ok());
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
