#!/usr/bin/env python3
"""Writes the published benchmark figures from the results files.

README.md and bench/README.md hold their benchmark figures only between
markers this script owns:

    <!-- publish.py: NAME -->
    ...generated...
    <!-- /publish.py -->

`bench/publish.py [--check] [--root DIR]` rewrites every such region from bench/results/*/results.json
(the files `bench/run.sh` writes); `bench/publish.py --check` rewrites nothing
and exits 1, naming each region that differs from what the files give, so a
figure edited by hand, or a results file replaced without publishing, fails
tests/published_figures.rs. A results file made from a dirty tree, or by a
run that did not complete, is never published: the script stops and names it.

Spreads: where several runs measured the same thing (ADD/DEL timing, the busy
node), a cell gives min, median and max over the runs and says how many; a
cell of one run gives the range over the cells it summarises.
"""

import json
import pathlib
import re
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md"]


def use_root(root):
    """Publish a copy of the tree (tests/published_figures.rs checks one it altered)."""
    global ROOT, RESULTS, PAGES
    ROOT = pathlib.Path(root).resolve()
    RESULTS = ROOT / "bench" / "results"
    PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md"]
REGION = re.compile(r"(<!-- publish\.py: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- /publish\.py -->)", re.S)


class Unpublishable(Exception):
    pass


def load(name):
    """A results directory's results.json, refused when it may not be published."""
    path = RESULTS / name / "results.json" if name else RESULTS / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Unpublishable(f"{path.relative_to(ROOT)}: cannot read it: {e}")
    meta = data.get("meta", {})
    if meta.get("dirty", True):
        raise Unpublishable(f"{path.relative_to(ROOT)}: made from a tree with uncommitted changes (meta.dirty)")
    if not data.get("complete"):
        raise Unpublishable(f"{path.relative_to(ROOT)}: the run did not complete")
    data["_source"] = str(path.relative_to(ROOT / "bench"))
    return data


# Links in a region are relative to the page it is on: "bench/" from the
# top-level README, "" from bench/README.md.
LINK_BASE = [""]


def cite(*runs):
    """Where a figure comes from: each file's link and commit."""
    seen = []
    for r in runs:
        name = r["_source"].rsplit("/", 1)[0] if "/" in r["_source"] else "results"
        link = f"[{name}]({LINK_BASE[0]}{r['_source'].replace('results.json', 'results.md')}) at {r['meta']['commit'][:7]}"
        if link not in seen:
            seen.append(link)
    return ", ".join(seen)


def span(values, fmt="{:.3f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def spread(values, fmt="{:.2f}"):
    """min / median / max over runs, with how many."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0]) + " (1 run)"
    return f"{fmt.format(min(values))} / {fmt.format(statistics.median(values))} / {fmt.format(max(values))} ({len(values)} runs)"


ROWS = [("ours", "bpf-ratelimit"), ("ref-fair", "reference, our burst"), ("ref-containerd", "reference, containerd burst")]


def matrix_rows(full):
    cells = full["matrix"]["cells"]
    path = {(c["rtt_ms"], c["way"], c["cc"], c["flows"]): c["wire_bps"] for c in cells if c["row"] == "unshaped"}
    by_row = {row: [c for c in cells if c["row"] == row] for row, _ in ROWS}

    def ratio(c):
        p = path.get((c["rtt_ms"], c["way"], c["cc"], c["flows"]))
        return c["wire_bps"] / min(c["rate_bps"], p) if p else None

    n = len(by_row["ours"])
    rtts = ", ".join("LAN" if r == 0 else f"{r:g} ms" for r in full["meta"]["rtts_ms"])
    rates = ", ".join(r[0] for r in full["meta"]["rates"])
    lines = [
        (f"bulk TCP on the wire ÷ min(limit, what the path carries unshaped): {n} cells ({rtts} × {rates} × CUBIC, BBR × 1, 8 flows × both ways)",
         [span([ratio(c) for c in by_row[row]]) for row, _ in ROWS]),
        ("segments resent: the most in a cell (cells over 5%)",
         [f"{100 * max(c['resent_share'] for c in by_row[row]):.1f}% ({sum(c['resent_share'] > 0.05 for c in by_row[row])})" for row, _ in ROWS]),
        ("Jain's index over 8 flows: the lowest",
         [span([min(c["jain"] for c in by_row[row] if c["flows"] == 8 and c["jain"] is not None)]) for row, _ in ROWS]),
    ]
    lat = full["matrix"]["latency"]
    for rate in ("10M", "100M"):
        got = {l["row"]: l for l in lat if l["rtt_ms"] == 0 and l["rate"] == rate}
        if got:
            lines.append((f"a 16 KB response on a fresh connection beside the pod's own download, {rate}, LAN: p99 (samples)",
                          [f"{got[row]['beside_p99_ms']:.1f} ms ({got[row]['beside_samples']})" if row in got else "—" for row, _ in ROWS]))
    lines.append(("an idle pod's 16 KB response, p50 minus the unshaped path's, at any RTT: the most",
                  [f"{max(l['idle_response_p50_ms'] - l['unshaped_response_p50_ms'] for l in lat if l['row'] == row):.1f} ms" for row, _ in ROWS]))
    return [(what, figures, cite(full)) for what, figures in lines]


def policer_rows(run):
    cells = run["matrix"]["cells"]
    path = {(c["rtt_ms"], c["way"], c["cc"], c["flows"]): c["goodput_bps"] for c in cells if c["row"] == "unshaped"}
    rows = []
    for lo, hi, where in ((0, 10, "LAN to 10 ms"), (10.01, 1000, "20 to 50 ms")):
        got = [c for c in cells if c["row"] == "ours-policer" and c["way"] == "download" and lo <= c["rtt_ms"] <= hi]
        key = lambda c: (c["rtt_ms"], c["way"], c["cc"], c["flows"])
        ratios = [c["goodput_bps"] / min(c["rate_bps"], path[key(c)]) for c in got if key(c) in path]
        rows.append((f"bpf-ratelimit with `ingressQueue: false` (the policer), download at {where}: TCP goodput ÷ min(limit, the path's goodput unshaped), {len(got)} cells; the most resent",
                     [f"{span(ratios)}; {100 * max(c['resent_share'] for c in got):.1f}%", "—", "—"], cite(run)))
    return rows


def wire_rows(wire):
    shapes = wire["wire"]
    rows = []
    n = len({s["shape"] for s in shapes})

    def fig(row):
        got = [s for s in shapes if s["row"] == row]
        sent = span([s["wire_ratio"] for s in got if s["wire_ratio"] >= 0.01])
        refused = [s["shape"].split(",")[0] for s in got if s["wire_ratio"] < 0.01]
        return sent + (f" ({', '.join(refused)}: refused, nothing sent)" if refused else "")

    rows.append((f"every traffic shape a 10M pod makes ({n}: TCP, UDP at 2×, tiny writes, MSS 88, GSO, fragments, raw sockets, AF_XDP, floods, a tunnel), LAN: on the wire ÷ the limit",
                 [fig(row) for row, _ in ROWS], cite(wire)))
    frag = [s for s in shapes if "fragments" in s["shape"] and "download" in s["shape"]]
    if frag:
        rows.append(("UDP in 8000-byte datagrams at 2× into the pod: delivered ÷ the limit",
                     [span([s["goodput_ratio"] for s in frag if s["row"] == row]) for row, _ in ROWS], cite(wire)))
    return rows


def main_cni_rows(run):
    rows = []
    for form in sorted({r["form"] for r in run["main_cni"]}):
        got = {r["row"]: r for r in run["main_cni"] if r["form"] == form}

        def fig(row):
            r = got.get(row)
            if r is None:
                return "—"
            if r["add_error"]:
                return "ADD fails"
            return f"{r['tcp_download']:.3f} / {r['tcp_upload']:.3f}"

        rows.append((f"under an emulated eBPF main CNI, {form}: 100M TCP download / upload on the wire ÷ the limit", [fig(row) for row, _ in ROWS], cite(run)))
    return rows


def timing_rows(runs):
    def ratio(run, key):
        t = {r["row"]: r for r in run["timing"]}
        return t["ours"][key] / t["ref-containerd"][key] if "ours" in t and "ref-containerd" in t else None

    pods = sorted({r["pods"] for run in runs for r in run["timing"]})
    rows = []
    for key, what in (("add_median_ms", "ADD, median"), ("add_p99_ms", "ADD, p99"), ("del_median_ms", "DEL, median"), ("del_p99_ms", "DEL, p99")):
        rows.append((f"{what}, ours ÷ the reference's (min / median / max; {', '.join(map(str, pods))} pods a run)",
                     [spread([ratio(run, key) for run in runs]), "—",
                      spread([t[key] for run in runs for t in run["timing"] if t["row"] == "ref-containerd"]) + " ms"], cite(*runs)))
    status = [run["status"] for run in runs if run.get("status")]
    if status:
        rows.append(("STATUS (ours only): median and p99, ms (min / median / max)",
                     [f"median {spread([s['median_ms'] for s in status])}; p99 {spread([s['p99_ms'] for s in status])}", "—", "—"], cite(*runs)))
    return rows


def busy_rows(runs):
    groups = {}
    for run in runs:
        for b in run["busy_node"]:
            key = (b["pods"], b.get("moving") or b["pods"], b["rate"], b["way"], "together" if b.get("moving") is not None else "one by one")
            groups.setdefault(key, []).append((run, b))
    variants = {"ours": "", "ours-low-cpu": ", ours with `ingressTradeoff: cpu`", "ours-policer": ", ours with `ingressQueue: false`"}
    rows = []
    for (pods, moving, rate, way, started), items in sorted(groups.items()):
        # Ratios pair rows of the same run: the machine's load is shared.
        by_run = {}
        for run, b in items:
            by_run.setdefault(run["_source"], {})[b["row"]] = b
        among = f", {moving} moving" if moving != pods else ""
        sources = cite(*sorted({r["_source"]: r for r, _ in items}.values(), key=lambda r: r["_source"]))
        for variant, named in variants.items():
            runs_with = [got for got in by_run.values() if variant in got]
            if not runs_with:
                continue
            ratios = [got[variant]["cpu_per_gbps"] / got["ref-fair"]["cpu_per_gbps"] for got in runs_with if "ref-fair" in got]
            ours_low = [got[variant]["goodput_min"] for got in runs_with]
            ref_low = [got["ref-fair"]["goodput_min"] for got in runs_with if "ref-fair" in got]
            rows.append((f"a busy node{named}, {pods} pods × {rate}{among}, {way} (clients started {started}): CPU per Gbit/s ÷ the reference's (min / median / max); the lowest pod's goodput ÷ limit",
                         [f"{spread(ratios)}; {span(ours_low)}", f"—; {span(ref_low)}", "—"], sources))
    return rows


def bpf_rows(full):
    per_run = [ns / n for progs in full["matrix"]["bpf_stats"].values() for ns, n in progs.values() if n]
    return [("BPF run time per program run (bpf_stats, the cgroup and sock_ops programs, 10M–1G), ns",
             [span(per_run, "{:.0f}"), "—", "—"], cite(full))]


def table(rows):
    out = ["| measured | " + " | ".join(name for _, name in ROWS) + " | from |", "|---|---|---|---|---|"]
    for what, figures, source in rows:
        out.append(f"| {what} | " + " | ".join(figures) + f" | {source} |")
    return "\n".join(out) + "\n\nGenerated by `bench/publish.py` from the results files in the last column (each links to its tables and gives the commit it was made at).\n"


def all_rows():
    full = load("")
    rows = matrix_rows(full)
    rows += policer_rows(load("policer"))
    rows += wire_rows(load("wire"))
    rows += main_cni_rows(load("maincni"))
    rows += timing_rows([load(f"timing-{i}") for i in range(1, 6)])
    rows += busy_rows([load(d.name) for d in sorted(RESULTS.glob("busy-node*")) if (d / "results.json").exists()])
    rows += bpf_rows(full)
    return rows


# The top-level README's few rows: what each claim there rests on.
HEADLINE = ("bulk TCP on the wire", "segments resent", "beside the pod's own download", "under an emulated eBPF main CNI",
            "ADD, median", "a busy node, 40 pods × 50M")


def headline():
    return table([r for r in all_rows() if r[0].startswith(HEADLINE) or any(h in r[0] for h in HEADLINE)])


def figures():
    return table(all_rows())


def tradeoff():
    """`ingressTradeoff`: what the cpu mode saves on a busy node against what
    it costs a pod's responses beside its download, from one busy-node run
    and one matrix run that each hold both of ours' rows."""
    busy = [load(d.name) for d in sorted(RESULTS.glob("busy-tradeoff*")) if (d / "results.json").exists()]
    lat = [load(d.name) for d in sorted(RESULTS.glob("latency-rows*")) if (d / "results.json").exists()]
    if not busy or not lat:
        raise Unpublishable("no bench/results/busy-tradeoff*/ or latency-rows*/ results (bench/README.md says how to make them)")
    out = ["| `ingressTradeoff` | " + " | ".join(f"busy node {b['pods']} × {b['rate']}, {b['way']}: CPU per Gbit/s ÷ the reference's; lowest pod" for b in busy[0]["busy_node"] if b["row"] == "ours")
           + " | " + " | ".join(f"16 KB responses beside the pod's download, {l['rate']}, {'LAN' if l['rtt_ms'] == 0 else str(l['rtt_ms']) + ' ms'}: p50 / p99 (samples)" for l in lat[0]["matrix"]["latency"] if l["row"] == "ours") + " |"]
    out.append("|---" * (out[0].count("|") - 1) + "|")
    for row, name in (("ours", "`latency` (default)"), ("ours-low-cpu", "`cpu`")):
        cells = []
        for b in busy[0]["busy_node"]:
            if b["row"] != "ours":
                continue
            ratios, lows = [], []
            for run in busy:
                got = {x["row"]: x for x in run["busy_node"] if (x["pods"], x["rate"], x["way"]) == (b["pods"], b["rate"], b["way"])}
                if row in got and "ref-fair" in got:
                    ratios.append(got[row]["cpu_per_gbps"] / got["ref-fair"]["cpu_per_gbps"])
                    lows.append(got[row]["goodput_min"])
            cells.append(f"{spread(ratios)}; {span(lows)}")
        for l in lat[0]["matrix"]["latency"]:
            if l["row"] != "ours":
                continue
            got = [x for run in lat for x in run["matrix"]["latency"] if (x["row"], x["rate"], x["rtt_ms"]) == (row, l["rate"], l["rtt_ms"])]
            cells.append(", ".join(f"{x['beside_p50_ms']:.1f} / {x['beside_p99_ms']:.1f} ms ({x['beside_samples']})" for x in got) or "—")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n\nFrom " + cite(*busy, *lat) + ".\n"


LATENCY_ROWS = [("ours", "bpf-ratelimit"), ("ours-low-cpu", "bpf-ratelimit, `ingressTradeoff: cpu`"), ("ref-our-queue", "reference, our burst and our queue depth"),
                ("ref-fair", "reference, our burst"), ("ref-containerd", "reference, containerd burst")]


def latency():
    """16 KB responses on fresh connections beside the pod's own download,
    open loop (the same requests at the same times for every row), from
    the latency-rows* runs."""
    runs_ = [load(d.name) for d in sorted(RESULTS.glob("latency-rows*")) if (d / "results.json").exists()]
    if not runs_:
        raise Unpublishable("no bench/results/latency-rows*/ results (bench/README.md says how to make them)")
    keys = sorted({(l["rtt_ms"], l["rate_bps"], l["rate"]) for r in runs_ for l in r["matrix"]["latency"]})
    out = ["| shaper | " + " | ".join(f"{rate}, {'LAN' if rtt == 0 else f'{rtt:g} ms'}: p50 / p99 (answered of sent); download on the wire" for rtt, _, rate in keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
    for row, name in LATENCY_ROWS:
        cells = []
        for rtt, bps, rate in keys:
            got = [l for r in runs_ for l in r["matrix"]["latency"] if (l["row"], l["rtt_ms"], l["rate"]) == (row, rtt, rate)]
            cells.append(", ".join(f"{l['beside_p50_ms']:.1f} / {l['beside_p99_ms']:.1f} ms ({l['beside_samples']} of {l['beside_samples'] + l['beside_failed']}); {l['beside_download_wire_ratio']:.3f}" for l in got) or "—")
        if any(c != "—" for c in cells):
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n\nFrom " + cite(*runs_) + ".\n"


def runs():
    """Every results file the figures come from: what ran, where, and how."""
    out = ["| results | commit | run (UTC) | parts | took | command |", "|---|---|---|---|---|---|"]
    dirs = [""] + sorted(d.name for d in RESULTS.iterdir() if (d / "results.json").exists())
    for name in dirs:
        r = load(name)
        m = r["meta"]
        link = f"[{name or 'results'}]({LINK_BASE[0]}{r['_source'].replace('results.json', 'results.md')})"
        out.append(f"| {link} | {m['commit'][:7]} | {m['date_utc']} | {', '.join(m['parts'])} | {m['elapsed_s'] / 60:.0f} min | `{m['command']}` |")
    return "\n".join(out) + "\n"


GENERATORS = {"headline": headline, "figures": figures, "runs": runs, "tradeoff": tradeoff, "latency": latency}


def render(page, text):
    LINK_BASE[0] = "" if page.parent.name == "bench" else "bench/"

    def replace(m):
        name = m.group("name")
        if name not in GENERATORS:
            raise Unpublishable(f"unknown region '{name}' (known: {', '.join(GENERATORS)})")
        return m.group(1) + GENERATORS[name]() + m.group(4)

    return REGION.sub(replace, text)


def main(argv):
    check = "--check" in argv
    if "--root" in argv:
        use_root(argv[argv.index("--root") + 1])
    stale = []
    rendered = []
    try:
        for page in PAGES:
            text = page.read_text()
            if not REGION.search(text):
                raise Unpublishable(f"{page.relative_to(ROOT)} has no <!-- publish.py: NAME --> region")
            rendered.append((page, text, render(page, text)))
    except Unpublishable as e:
        print(f"bench/publish.py: {e}", file=sys.stderr)
        return 2
    # Every page rendered before any is written: a refusal leaves none half-published.
    for page, text, new in rendered:
        if new != text:
            stale.append(str(page.relative_to(ROOT)))
            if not check:
                page.write_text(new)
    if check and stale:
        print("bench/publish.py --check: published figures differ from the results files in: " + ", ".join(stale) +
              " (run bench/publish.py and commit, or restore the results files)", file=sys.stderr)
        return 1
    print(("up to date: " if check or not stale else "rewrote: ") + ", ".join(stale or [str(p.relative_to(ROOT)) for p in PAGES]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
