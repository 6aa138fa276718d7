//! iperf3 results, read strictly: a field iperf3 did not print is an error,
//! never a zero, so that a check on it cannot pass by accident.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One iperf3 TCP or UDP run, as its JSON reports it.
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    /// Receiver-side goodput over the measured time (omitted seconds excluded).
    pub goodput_bps: f64,
    /// Bytes the sender sent in that time (payload).
    pub sent_bytes: f64,
    /// Segments the sender retransmitted (TCP only; 0 for UDP).
    pub retransmits: u64,
    /// Each stream's receiver-side goodput (TCP; for UDP iperf3 gives each
    /// stream's sender-side rate only).
    pub streams_bps: Vec<f64>,
    /// Goodput per reporting interval (omitted ones excluded).
    pub intervals_bps: Vec<f64>,
    /// CPU use of the iperf3 processes, percent of one core... of all cores,
    /// as iperf3 reports it: (local, remote).
    pub cpu_percent: (f64, f64),
}

fn number(v: &Value, path: &[&str]) -> Result<f64> {
    let mut at = v;
    for p in path {
        at = at.get(p).with_context(|| format!("iperf3 printed no {}", path.join(".")))?;
    }
    at.as_f64().with_context(|| format!("iperf3's {} is not a number: {at}", path.join(".")))
}

impl Transfer {
    /// Reads iperf3's `-J` output; fails on an error or a missing field.
    pub fn from_json(v: &Value) -> Result<Self> {
        if let Some(e) = v.get("error") {
            bail!("iperf3 failed: {e}");
        }
        let udp = v["start"]["test_start"]["protocol"] == "UDP";
        let end = &v["end"];
        let (goodput_bps, sent_bytes, retransmits) = if udp {
            // end.sum is the client's side: the sender's rate unless -R.
            // sum_received is what the receiver got (iperf3 >= 3.11).
            (number(end, &["sum_received", "bits_per_second"])?, number(end, &["sum_sent", "bytes"])?, 0)
        } else {
            (
                number(end, &["sum_received", "bits_per_second"])?,
                number(end, &["sum_sent", "bytes"])?,
                number(end, &["sum_sent", "retransmits"])? as u64,
            )
        };
        let streams = end["streams"].as_array().context("iperf3 printed no streams")?;
        let streams_bps = streams
            .iter()
            .map(|s| if udp { number(s, &["udp", "bits_per_second"]) } else { number(s, &["receiver", "bits_per_second"]) })
            .collect::<Result<Vec<_>>>()?;
        let intervals = v["intervals"].as_array().context("iperf3 printed no intervals")?;
        let intervals_bps = intervals
            .iter()
            .filter(|i| i["sum"]["omitted"] != true)
            .map(|i| number(i, &["sum", "bits_per_second"]))
            .collect::<Result<Vec<_>>>()?;
        let cpu = (number(end, &["cpu_utilization_percent", "host_total"])?, number(end, &["cpu_utilization_percent", "remote_total"])?);
        Ok(Transfer { goodput_bps, sent_bytes, retransmits, streams_bps, intervals_bps, cpu_percent: cpu })
    }

    /// The share of segments the sender resent (TCP), with `mss` payload bytes per segment.
    pub fn resent_share(&self, mss: f64) -> f64 {
        let segments = (self.sent_bytes / mss).max(1.0);
        self.retransmits as f64 / segments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp() -> Value {
        serde_json::json!({
            "start": {"test_start": {"protocol": "TCP"}},
            "intervals": [
                {"sum": {"bits_per_second": 5.0, "omitted": true}},
                {"sum": {"bits_per_second": 9.0, "omitted": false}}
            ],
            "end": {
                "sum_received": {"bits_per_second": 9.5e6},
                "sum_sent": {"bytes": 14480.0, "retransmits": 1},
                "streams": [{"receiver": {"bits_per_second": 9.5e6}}],
                "cpu_utilization_percent": {"host_total": 10.0, "remote_total": 20.0}
            }
        })
    }

    #[test]
    fn reads_what_iperf3_printed() {
        let t = Transfer::from_json(&tcp()).unwrap();
        assert_eq!(t.goodput_bps, 9.5e6);
        assert_eq!(t.retransmits, 1);
        assert_eq!(t.intervals_bps, vec![9.0]);
        assert!((t.resent_share(1448.0) - 0.1).abs() < 1e-9);
        assert_eq!(t.cpu_percent, (10.0, 20.0));
    }

    #[test]
    fn udp_goodput_is_what_the_receiver_got() {
        let v = serde_json::json!({
            "start": {"test_start": {"protocol": "UDP"}},
            "intervals": [{"sum": {"bits_per_second": 2e7, "omitted": false}}],
            "end": {
                "sum": {"bits_per_second": 2e7, "bytes": 2.5e6},
                "sum_sent": {"bits_per_second": 2e7, "bytes": 2.5e6},
                "sum_received": {"bits_per_second": 1e7, "bytes": 1.25e6},
                "streams": [{"udp": {"bits_per_second": 2e7}}],
                "cpu_utilization_percent": {"host_total": 1.0, "remote_total": 2.0}
            }
        });
        let t = Transfer::from_json(&v).unwrap();
        assert_eq!((t.goodput_bps, t.sent_bytes, t.retransmits), (1e7, 2.5e6, 0));
        let mut old = v.clone();
        old["end"].as_object_mut().unwrap().remove("sum_received");
        assert!(Transfer::from_json(&old).unwrap_err().to_string().contains("sum_received"));
    }

    #[test]
    fn a_missing_field_is_an_error_not_a_zero() {
        for path in [["end", "sum_sent"], ["end", "sum_received"], ["end", "cpu_utilization_percent"]] {
            let mut v = tcp();
            v[path[0]].as_object_mut().unwrap().remove(path[1]);
            assert!(Transfer::from_json(&v).is_err(), "{path:?}");
        }
        let mut v = tcp();
        v["end"]["sum_sent"].as_object_mut().unwrap().remove("retransmits");
        assert!(Transfer::from_json(&v).unwrap_err().to_string().contains("retransmits"));
        let mut v = tcp();
        v["error"] = Value::String("busy".into());
        assert!(Transfer::from_json(&v).is_err());
    }
}
