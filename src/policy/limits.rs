//! A pod's limits, their bounds and default bursts. Rates are bits/s and
//! bursts bits, as in the reference bandwidth plugin; how they are chosen is
//! resolve.rs's.


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
    pub fn key(self, what: &str) -> String {
        format!("{}{what}", self.name())
    }

    pub fn rate_annotation(self) -> &'static str {
        match self {
            Direction::Ingress => INGRESS_BANDWIDTH,
            Direction::Egress => EGRESS_BANDWIDTH,
        }
    }

    pub fn burst_annotation(self) -> &'static str {
        match self {
            Direction::Ingress => INGRESS_BURST,
            Direction::Egress => EGRESS_BURST,
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

    pub fn set(&mut self, dir: Direction, limit: Option<Limit>) {
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
