//! Traffic control over rtnetlink: the root TBF qdisc of the ingress queue
//! and its children (pfifo_fast, or prio with fq_codel),
//! the clsact qdisc, and cls_bpf filters in direct-action mode on its
//! ingress or egress hook; and the ifb device the ingress queue sits on.
//! No `tc` or `ip` binary is run or needed.
//!
//! Every function works in the network namespace of the calling thread: the
//! netlink socket is opened there. Inside a pod's netns, call them from
//! `crate::node::netns::in_netns`. Requests carry the flags iproute2's `tc` sends
//! for the same verb (add: create + exclusive; replace: create + replace;
//! change: none), so the kernel treats them exactly as it treats `tc`.
//!
//! The rust-netlink crates frame the messages and know the tc header and the
//! cls_bpf options; TBF's options (struct tc_tbf_qopt and its attributes)
//! are built and read here.

use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{anyhow, bail, Context, Result};
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// TC_H_ROOT: the parent of a root qdisc.
pub const ROOT: u32 = 0xFFFF_FFFF;
/// TC_H_CLSACT (== TC_H_INGRESS): the parent of the clsact qdisc.
const CLSACT_PARENT: u32 = 0xFFFF_FFF1;
/// The clsact qdisc's own handle (ffff:).
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// ETH_P_ALL, which tcm_info carries in network byte order.
const ETH_P_ALL: u16 = 0x0003;

/// A qdisc handle from its major number: `b9a1:` is `handle(0xb9a1)`.
pub const fn handle(major: u16) -> u32 {
    (major as u32) << 16
}

/// The hook of a clsact qdisc a filter sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    /// The filter's parent: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS or _EGRESS).
    fn parent(self) -> u32 {
        let minor = match self {
            Hook::Ingress => TcHandle::MIN_INGRESS,
            Hook::Egress => TcHandle::MIN_EGRESS,
        };
        (CLSACT_PARENT & 0xFFFF_0000) | u32::from(minor)
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// A TBF qdisc's parameters: rate in bits/s, bucket and queue in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    pub rate_bits: u64,
    pub burst_bytes: u64,
    pub limit_bytes: u64,
}

/// A qdisc as the kernel dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// Read back for TBF qdiscs: the rate in bytes/s × 8, the bucket as tc
    /// reports it (derived from the kernel's time buffer), the queue limit.
    pub tbf: Option<Tbf>,
    /// What the qdisc has sent: bytes (as the qdisc counts them: every
    /// segment with its headers) and packets.
    pub sent_bytes: u64,
    pub sent_packets: u64,
}

/// A cls_bpf filter as the kernel dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfFilter {
    pub pref: u16,
    pub handle: u32,
    /// The program's ID, and the name given when it was attached.
    pub prog_id: u32,
    pub name: String,
    pub direct_action: bool,
}

/// How a request may treat an existing object, as tc's verbs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Fails if it exists (`tc ... add`).
    Add,
    /// Creates or replaces (`tc ... replace`).
    Replace,
    /// Changes an existing one in place (`tc ... change`).
    Change,
}

impl Verb {
    fn flags(self) -> u16 {
        match self {
            Verb::Add => NLM_F_CREATE | NLM_F_EXCL,
            Verb::Replace => NLM_F_CREATE | NLM_F_REPLACE,
            Verb::Change => 0,
        }
    }
}

// ---- TBF ----

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// TC_LINKLAYER_ETHERNET: the rate is computed by the kernel, so no rate
/// table is needed.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// struct tc_tbf_qopt: rate and peakrate (struct tc_ratespec, 12 bytes
/// each), limit, buffer, mtu.
const TBF_QOPT_LEN: usize = 36;
/// tc's ticks per microsecond (/proc/net/psched: 1000 ns per us, 64 ns per
/// tick, since PSCHED_SHIFT became 6), for reading the bucket back as tc does.
const TICKS_PER_USEC: f64 = 1000.0 / 64.0;

fn tbf_options(spec: &Tbf) -> Result<Vec<TcOption>> {
    let rate = spec.rate_bits / 8;
    let burst = u32::try_from(spec.burst_bytes).map_err(|_| anyhow!("a TBF burst of {} bytes is over 4 GiB", spec.burst_bytes))?;
    let limit = u32::try_from(spec.limit_bytes).map_err(|_| anyhow!("a TBF limit of {} bytes is over 4 GiB", spec.limit_bytes))?;
    if rate == 0 || burst == 0 {
        bail!("a TBF needs a rate and a burst");
    }
    let mut qopt = [0u8; TBF_QOPT_LEN];
    // rate: cell_log 0, linklayer ethernet, overhead/cell_align/mpu 0, rate.
    qopt[1] = TC_LINKLAYER_ETHERNET;
    qopt[8..12].copy_from_slice(&u32::try_from(rate).unwrap_or(u32::MAX).to_ne_bytes());
    // peakrate stays zero: no peak rate.
    qopt[24..28].copy_from_slice(&limit.to_ne_bytes());
    // buffer (28..32) is derived by the kernel from TCA_TBF_BURST; mtu 0.
    let mut options = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt.to_vec())),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst.to_ne_bytes().to_vec())),
    ];
    if rate >= 1 << 32 {
        options.push(TcOption::Other(DefaultNla::new(TCA_TBF_RATE64, rate.to_ne_bytes().to_vec())));
    }
    Ok(options)
}

/// The raw bytes of an attribute the crate does not know.
fn nla_bytes(nla: &impl Nla) -> Vec<u8> {
    let mut v = vec![0u8; nla.value_len()];
    nla.emit_value(&mut v);
    v
}

fn parse_tbf(options: &[TcOption]) -> Option<Tbf> {
    // An unknown kind's TCA_OPTIONS arrives whole, as one attribute.
    let nested = options.iter().find_map(|o| match o {
        TcOption::Other(nla) => Some(nla_bytes(nla)),
        _ => None,
    })?;
    let (mut qopt, mut rate64) = (None, None);
    for nla in NlasIterator::new(&nested[..]).flatten() {
        let value = nla.value();
        match nla.kind() {
            TCA_TBF_PARMS if value.len() >= TBF_QOPT_LEN => qopt = Some(value[..TBF_QOPT_LEN].to_vec()),
            TCA_TBF_RATE64 if value.len() == 8 => rate64 = Some(u64::from_ne_bytes(value.try_into().ok()?)),
            _ => {}
        }
    }
    let qopt = qopt?;
    let u32_at = |at: usize| u32::from_ne_bytes(qopt[at..at + 4].try_into().unwrap());
    let rate = rate64.unwrap_or(u64::from(u32_at(8)));
    let limit = u32_at(24);
    let buffer_ticks = u32_at(28);
    // As tc computes it (tc_calc_xmitsize): rate × the buffer's time in
    // whole microseconds (tc_core_tick2time truncates).
    let buffer_us = (f64::from(buffer_ticks) / TICKS_PER_USEC) as u32;
    let burst = (rate as f64 * f64::from(buffer_us) / 1e6) as u64;
    Some(Tbf { rate_bits: rate * 8, burst_bytes: burst, limit_bytes: u64::from(limit) })
}

fn tc_header(ifindex: u32, parent: u32, handle: u32, info: u32) -> Result<TcHeader> {
    Ok(TcHeader {
        index: i32::try_from(ifindex).map_err(|_| anyhow!("interface index {ifindex} is out of range"))?,
        parent: parent.into(),
        handle: handle.into(),
        info,
        ..Default::default()
    })
}

/// Adds, replaces or changes the TBF qdisc `handle` at `parent` (usually ROOT).
pub fn tbf(verb: Verb, ifindex: u32, parent: u32, handle: u32, spec: &Tbf) -> Result<()> {
    let msg = TcMessage::from_parts(
        tc_header(ifindex, parent, handle, 0)?,
        vec![TcAttribute::Kind("tbf".into()), TcAttribute::Options(tbf_options(spec)?)],
    );
    Rtnl::open()?.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), verb.flags())
}

/// Adds or replaces a pfifo_fast qdisc `handle` at `parent`: three bands,
/// dequeued in order, chosen by each packet's priority.
pub fn pfifo_fast(verb: Verb, ifindex: u32, parent: u32, handle: u32) -> Result<()> {
    let msg = TcMessage::from_parts(tc_header(ifindex, parent, handle, 0)?, vec![TcAttribute::Kind("pfifo_fast".into())]);
    Rtnl::open()?.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), verb.flags())
}

// ---- prio and fq_codel: the flow-fair child of the ingress queue ----

/// TCA_OPTIONS: prio's options are one struct, not nested attributes.
const TCA_OPTIONS: u16 = 2;
/// TCQ_PRIO_BANDS's map: one band for each of the 16 priorities (TC_PRIO_MAX + 1).
pub const PRIOMAP_LEN: usize = 16;

/// Adds or replaces a prio qdisc `handle` at `parent` with `bands` bands,
/// each a pfifo the kernel sizes from the device's txqueuelen, and a packet
/// of priority p going to band `priomap[p]`.
pub fn prio(verb: Verb, ifindex: u32, parent: u32, handle: u32, bands: u8, priomap: [u8; PRIOMAP_LEN]) -> Result<()> {
    // struct tc_prio_qopt: int bands; __u8 priomap[TC_PRIO_MAX + 1].
    let mut qopt = Vec::with_capacity(4 + PRIOMAP_LEN);
    qopt.extend_from_slice(&i32::from(bands).to_ne_bytes());
    qopt.extend_from_slice(&priomap);
    let msg = TcMessage::from_parts(
        tc_header(ifindex, parent, handle, 0)?,
        vec![TcAttribute::Kind("prio".into()), TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, qopt))],
    );
    Rtnl::open()?.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), verb.flags())
}

const TCA_FQ_CODEL_TARGET: u16 = 1;
const TCA_FQ_CODEL_INTERVAL: u16 = 3;

/// fq_codel's CoDel parameters; its limits (10240 packets, 32 MB of
/// truesize) stay the kernel's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FqCodel {
    pub target_us: u32,
    pub interval_us: u32,
}

/// Adds or replaces an fq_codel qdisc `handle` at `parent`.
pub fn fq_codel(verb: Verb, ifindex: u32, parent: u32, handle: u32, spec: &FqCodel) -> Result<()> {
    let options = vec![
        TcOption::Other(DefaultNla::new(TCA_FQ_CODEL_TARGET, spec.target_us.to_ne_bytes().to_vec())),
        TcOption::Other(DefaultNla::new(TCA_FQ_CODEL_INTERVAL, spec.interval_us.to_ne_bytes().to_vec())),
    ];
    let msg = TcMessage::from_parts(
        tc_header(ifindex, parent, handle, 0)?,
        vec![TcAttribute::Kind("fq_codel".into()), TcAttribute::Options(options)],
    );
    Rtnl::open()?.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), verb.flags())
}

/// Adds or replaces the clsact qdisc; `Replace` keeps an existing one and
/// the filters on it, as `tc qdisc replace dev X clsact` does.
pub fn clsact(verb: Verb, ifindex: u32) -> Result<()> {
    let msg = TcMessage::from_parts(tc_header(ifindex, CLSACT_PARENT, CLSACT_HANDLE, 0)?, vec![TcAttribute::Kind("clsact".into())]);
    Rtnl::open()?.ack(RouteNetlinkMessage::NewQueueDiscipline(msg), verb.flags())
}

/// Deletes the qdisc `handle` at `parent`. The kernel deletes a root qdisc
/// only if its handle is the one given. Returns false when there was none
/// to delete (ENOENT, or EINVAL for a root qdisc with another handle).
pub fn qdisc_delete(ifindex: u32, parent: u32, handle: u32) -> Result<bool> {
    let msg = TcMessage::from_parts(tc_header(ifindex, parent, handle, 0)?, Vec::new());
    match Rtnl::open()?.ack(RouteNetlinkMessage::DelQueueDiscipline(msg), 0) {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, &[libc::ENOENT, libc::EINVAL]) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the clsact qdisc, and with it every filter on its hooks.
pub fn clsact_delete(ifindex: u32) -> Result<bool> {
    qdisc_delete(ifindex, CLSACT_PARENT, CLSACT_HANDLE)
}

/// The qdiscs of one interface (the kernel's defaults, such as noqueue, included).
pub fn qdiscs(ifindex: u32) -> Result<Vec<Qdisc>> {
    // With strict checking (set on every socket here) the kernel dumps only
    // this interface's qdiscs; the filter below keeps that true on any kernel.
    let msg = TcMessage::with_index(i32::try_from(ifindex).map_err(|_| anyhow!("interface index {ifindex} is out of range"))?);
    let mut out = Vec::new();
    for reply in Rtnl::open()?.dump(RouteNetlinkMessage::GetQueueDiscipline(msg))? {
        let RouteNetlinkMessage::NewQueueDiscipline(q) = reply else { continue };
        if q.header.index != ifindex as i32 {
            continue;
        }
        let kind = q.attributes.iter().find_map(|a| if let TcAttribute::Kind(k) = a { Some(k.clone()) } else { None }).unwrap_or_default();
        let options = q.attributes.iter().find_map(|a| if let TcAttribute::Options(o) = a { Some(o.as_slice()) } else { None });
        let tbf = if kind == "tbf" { options.and_then(parse_tbf) } else { None };
        let (sent_bytes, sent_packets) = q
            .attributes
            .iter()
            .find_map(|a| if let TcAttribute::Stats(s) = a { Some((s.bytes, u64::from(s.packets))) } else { None })
            .unwrap_or_default();
        out.push(Qdisc { kind, handle: q.header.handle.into(), parent: q.header.parent.into(), tbf, sent_bytes, sent_packets });
    }
    Ok(out)
}

/// tcm_info of a filter: its preference and the protocol (all).
fn filter_info(pref: u16) -> u32 {
    (u32::from(pref) << 16) | u32::from(ETH_P_ALL.to_be())
}

/// Adds or replaces a cls_bpf filter in direct-action mode on `hook` of the
/// interface's clsact qdisc (which must exist), running `prog`; `name` is
/// recorded with it (tc records the object file's section or the pin's name).
/// A non-zero `classid` is handed to the program in `skb->tc_classid` (its
/// low 16 bits): one loaded program serves many filters, each with its own key.
#[allow(clippy::too_many_arguments)]
pub fn bpf_filter(verb: Verb, ifindex: u32, hook: Hook, pref: u16, handle: u32, prog: BorrowedFd<'_>, name: &str, classid: u16) -> Result<()> {
    let fd = u32::try_from(prog.as_raw_fd()).context("a negative program fd")?;
    let mut options = vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ];
    if classid != 0 {
        options.push(TcOption::Bpf(TcFilterBpfOption::ClassId(u32::from(classid).into())));
    }
    let msg = TcMessage::from_parts(
        tc_header(ifindex, hook.parent(), handle, filter_info(pref))?,
        vec![TcAttribute::Kind("bpf".into()), TcAttribute::Options(options)],
    );
    Rtnl::open()?.ack(RouteNetlinkMessage::NewTrafficFilter(msg), verb.flags())
}

/// TCA_BPF_ACT: a cls_bpf filter's actions (nested).
const TCA_BPF_ACT: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

/// Adds or replaces a cls_bpf filter in classic mode on `hook`: `prog`
/// decides whether a frame matches (its return is -1 for every frame it
/// should take), and each matching frame is redirected to the egress of
/// the device `target` by a mirred action, as `tc filter ... bpf ... action
/// mirred egress redirect dev X` does. mirred marks the frame as redirected
/// from ingress on every kernel, which an ifb needs (bpf_redirect does not
/// before 6.x: on 6.1 the ifb dropped every frame).
pub fn bpf_filter_redirecting(ifindex: u32, hook: Hook, pref: u16, handle: u32, prog: BorrowedFd<'_>, name: &str, target: u32) -> Result<()> {
    use netlink_packet_route::tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption, TcActionType, TcMirror, TcMirrorActionType,
    };
    let fd = u32::try_from(prog.as_raw_fd()).context("a negative program fd")?;
    let mut action = TcAction::default();
    action.tab = 1;
    let mut generic = TcActionGeneric::default();
    generic.action = TcActionType::Stolen;
    let mut mirror = TcMirror::default();
    mirror.generic = generic;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = target;
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
    ];
    let actions = vec![action];
    let mut bytes = vec![0u8; netlink_packet_core::Emitable::buffer_len(&actions.as_slice())];
    netlink_packet_core::Emitable::emit(&actions.as_slice(), &mut bytes);
    let msg = TcMessage::from_parts(
        tc_header(ifindex, hook.parent(), handle, filter_info(pref))?,
        vec![
            TcAttribute::Kind("bpf".into()),
            TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
                TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
                TcOption::Bpf(TcFilterBpfOption::Other(DefaultNla::new(TCA_BPF_ACT | NLA_F_NESTED, bytes))),
            ]),
        ],
    );
    Rtnl::open()?.ack(RouteNetlinkMessage::NewTrafficFilter(msg), Verb::Replace.flags())
}

/// Deletes the filter at `pref` (and `handle`, unless 0: then every filter
/// at that preference) on `hook`. Returns false when there was none.
pub fn filter_delete(ifindex: u32, hook: Hook, pref: u16, handle: u32) -> Result<bool> {
    let mut attributes = Vec::new();
    if handle != 0 {
        attributes.push(TcAttribute::Kind("bpf".into()));
    }
    let msg = TcMessage::from_parts(tc_header(ifindex, hook.parent(), handle, filter_info(pref))?, attributes);
    match Rtnl::open()?.ack(RouteNetlinkMessage::DelTrafficFilter(msg), 0) {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, &[libc::ENOENT, libc::EINVAL]) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The cls_bpf filters on `hook` of the interface; none when it has no clsact.
pub fn bpf_filters(ifindex: u32, hook: Hook) -> Result<Vec<BpfFilter>> {
    let msg = TcMessage::from_parts(tc_header(ifindex, hook.parent(), 0, 0)?, Vec::new());
    let replies = match Rtnl::open()?.dump(RouteNetlinkMessage::GetTrafficFilter(msg)) {
        Ok(r) => r,
        // No clsact qdisc: no hook to list.
        Err(e) if is_errno(&e, &[libc::EINVAL, libc::ENOENT]) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewTrafficFilter(f) = reply else { continue };
        let handle: u32 = f.header.handle.into();
        let is_bpf = f.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
        // Each preference also dumps a head entry with handle 0 and no options.
        if !is_bpf || handle == 0 {
            continue;
        }
        let mut filter = BpfFilter { pref: (f.header.info >> 16) as u16, handle, prog_id: 0, name: String::new(), direct_action: false };
        for attr in &f.attributes {
            let TcAttribute::Options(options) = attr else { continue };
            for o in options {
                match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = *id,
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => filter.name = n.clone(),
                    TcOption::Bpf(TcFilterBpfOption::Flags(fl)) => filter.direct_action = fl.contains(TcBpfFlags::DirectAction),
                    _ => {}
                }
            }
        }
        out.push(filter);
    }
    Ok(out)
}

/// Opens the program pinned at `prog_pin`, gives the interface a clsact
/// qdisc (an existing one is kept, with the filters on it) and adds or
/// replaces the direct-action cls_bpf filter at `pref`/`handle` on `hook`
/// running that program: what `tc qdisc replace dev X clsact; tc filter
/// replace dev X HOOK pref P handle H bpf da pinned PIN` does.
pub fn attach_pinned_filter(ifindex: u32, hook: Hook, pref: u16, handle: u32, prog_pin: &std::path::Path, name: &str) -> Result<()> {
    attach_pinned_filter_with_classid(ifindex, hook, pref, handle, prog_pin, name, 0)
}

/// attach_pinned_filter, with the filter's `classid` (see bpf_filter).
pub fn attach_pinned_filter_with_classid(
    ifindex: u32,
    hook: Hook,
    pref: u16,
    handle: u32,
    prog_pin: &std::path::Path,
    name: &str,
    classid: u16,
) -> Result<()> {
    use std::os::fd::AsFd;
    let prog = crate::node::bpf_sys::obj_get(prog_pin).with_context(|| format!("cannot open the pinned program {}", prog_pin.display()))?;
    clsact(Verb::Replace, ifindex)?;
    bpf_filter(Verb::Replace, ifindex, hook, pref, handle, prog.as_fd(), name, classid)
}

/// Whether the filter at `pref` on `hook` runs, in direct-action mode, a
/// program the kernel names `prog_name` (it keeps 15 bytes of a name).
pub fn has_filter(ifindex: u32, hook: Hook, pref: u16, prog_name: &str) -> Result<bool> {
    Ok(bpf_filters(ifindex, hook)?
        .iter()
        .any(|f| f.pref == pref && f.direct_action && crate::node::bpf_sys::prog_name(f.prog_id).is_ok_and(|n| n == prog_name)))
}

// ---- Links: the ingress queue's ifb ----

/// Creates an ifb device `name` with `txqueuelen`, up, and returns its
/// index. Fails if a device of that name exists.
pub fn ifb_add(name: &str, txqueuelen: u32) -> Result<u32> {
    use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::TxQueueLen(txqueuelen),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]),
    ];
    Rtnl::open()?.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)?;
    crate::node::netns::ifindex(name)
}

/// Sets the transmit queue length of the device `ifindex`.
pub fn set_txqueuelen(ifindex: u32, txqueuelen: u32) -> Result<()> {
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg.attributes = vec![LinkAttribute::TxQueueLen(txqueuelen)];
    Rtnl::open()?.ack(RouteNetlinkMessage::SetLink(msg), 0)
}

/// Deletes the device `ifindex`. Returns false when there was none.
pub fn link_delete(ifindex: u32) -> Result<bool> {
    use netlink_packet_route::link::LinkMessage;
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    match Rtnl::open()?.ack(RouteNetlinkMessage::DelLink(msg), 0) {
        Ok(()) => Ok(true),
        Err(e) if is_errno(&e, &[libc::ENODEV, libc::ENOENT]) => Ok(false),
        Err(e) => Err(e),
    }
}

// ---- The socket ----

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// A request the kernel refused: its errno and extended-ack message.
#[derive(Debug)]
pub struct KernelError {
    pub errno: i32,
    pub message: String,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.errno))?;
        if !self.message.is_empty() {
            write!(f, " ({})", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for KernelError {}

/// Whether `e` is a refusal with one of these errnos.
pub fn is_errno(e: &anyhow::Error, errnos: &[i32]) -> bool {
    e.downcast_ref::<KernelError>().is_some_and(|k| errnos.contains(&k.errno))
}

/// NLMSGERR_ATTR_MSG: the extended ack's message.
const NLMSGERR_ATTR_MSG: u16 = 1;

impl Rtnl {
    fn open() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).context("cannot open a netlink socket")?;
        socket.bind_auto().context("cannot bind a netlink socket")?;
        socket.connect(&SocketAddr::new(0, 0)).context("cannot connect a netlink socket")?;
        // Errors carry the kernel's reason, and only the request's header.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Rtnl { socket, seq: 0, buf: Vec::with_capacity(64 * 1024) })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).context("cannot send a netlink request")?;
        Ok(self.seq)
    }

    /// Receives until the request `seq` is answered; its messages, if a dump.
    fn receive(&mut self, seq: u32, dump: bool) -> Result<Vec<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        loop {
            self.buf.clear();
            let n = self.socket.recv(&mut self.buf, 0).context("cannot read the netlink reply")?;
            if n > self.buf.len() {
                bail!("a netlink reply was truncated");
            }
            let mut at = 0;
            while at + 16 <= self.buf.len() {
                let len = u32::from_ne_bytes(self.buf[at..at + 4].try_into().unwrap()) as usize;
                if len < 16 || at + len > self.buf.len() {
                    bail!("a malformed netlink reply");
                }
                let bytes = &self.buf[at..at + len];
                at += (len + 3) & !3;
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| anyhow!("cannot parse a netlink reply: {e}"))?;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(err) if err.code.is_some() => {
                        return Err(KernelError { errno: -err.raw_code(), message: extack_message(&err.header) }.into());
                    }
                    // An ack (error code 0) ends a request that is not a dump.
                    NetlinkPayload::Error(_) if !dump => return Ok(out),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request and waits for its acknowledgement.
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
        let seq = self.send(msg, NLM_F_ACK | flags)?;
        self.receive(seq, false).map(drop)
    }

    fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        self.receive(seq, true)
    }
}

/// The extended ack's message in an error's payload: the request's 16-byte
/// header (NETLINK_CAP_ACK), then attributes.
fn extack_message(payload: &[u8]) -> String {
    let Some(attrs) = payload.get(16..) else { return String::new() };
    NlasIterator::new(attrs)
        .flatten()
        .find(|nla: &NlaBuffer<&[u8]>| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| String::from_utf8_lossy(nla.value()).trim_end_matches('\0').trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_options_read_back_as_sent() {
        let spec = Tbf { rate_bits: 10_455_801, burst_bytes: 6056, limit_bytes: 262_144 };
        let options = tbf_options(&spec).unwrap();
        // As the kernel dumps them: TCA_OPTIONS holding the attributes.
        let nested: Vec<u8> = {
            let mut v = vec![0u8; netlink_packet_core::Emitable::buffer_len(&options.as_slice())];
            netlink_packet_core::Emitable::emit(&options.as_slice(), &mut v);
            v
        };
        let back = parse_tbf(&[TcOption::Other(DefaultNla::new(2, nested))]).unwrap();
        assert_eq!(back.rate_bits, spec.rate_bits / 8 * 8);
        assert_eq!(back.limit_bytes, spec.limit_bytes);
        // The buffer (ticks) is the kernel's to fill in; zero here.
        assert_eq!(back.burst_bytes, 0);
        // Rates of 32 Gbit/s and more need TCA_TBF_RATE64.
        let fast = tbf_options(&Tbf { rate_bits: 100_000_000_000, burst_bytes: 1 << 20, limit_bytes: 1 << 24 }).unwrap();
        assert_eq!(fast.len(), 3);
        assert!(tbf_options(&Tbf { rate_bits: 8, burst_bytes: 1 << 33, limit_bytes: 1 }).is_err());
    }

    #[test]
    fn filter_parents_and_info_match_tc() {
        assert_eq!(Hook::Ingress.parent(), 0xFFFF_FFF2);
        assert_eq!(Hook::Egress.parent(), 0xFFFF_FFF3);
        // pref 49100, protocol all: what `tc filter add ... pref 49100 ... ` sends.
        assert_eq!(filter_info(49100), (49100 << 16) | 0x0300);
        assert_eq!(handle(0xb9a1), 0xb9a1_0000);
    }
}
