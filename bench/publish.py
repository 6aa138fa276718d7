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

Spreads: every part is run more than once (the matrix: bench/results/ and
matrix-*/; the wire and main-CNI tables: every run that has that part; the
policer, latency rows, timing and busy node: their numbered directories).
A figure that one run gives once (Jain's lowest, a p99, ADD ÷ the
reference's) is shown as min / median / max over the runs, with how many.
A figure that summarises many cells (the matrix's 120) gives the range of
the cells' medians over the runs, the range of every value any run gave,
and the widest spread of a single cell; the "cells" region lists each cell.
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


def over_runs(per_run):
    """Cell -> its values, one per run that measured it; `per_run` is a list of
    {cell: value} dicts, one per run."""
    cells = {}
    for got in per_run:
        for key, value in got.items():
            if value is not None:
                cells.setdefault(key, []).append(value)
    return cells


def cells_spread(per_run, fmt="{:.3f}"):
    """Many cells, each measured by several runs: the range of the cells'
    medians; then the range of every value any run gave, and the widest
    spread (max - min) of a single cell."""
    cells = over_runs(per_run)
    if not cells:
        return "—"
    everything = [v for values in cells.values() for v in values]
    if len(per_run) == 1:
        return span(everything, fmt) + " (1 run)"
    medians = [statistics.median(values) for values in cells.values()]
    widest = max(max(values) - min(values) for values in cells.values())
    return f"{span(medians, fmt)} (per-cell medians of {len(per_run)} runs; any run {span(everything, fmt)}; widest cell {fmt.format(widest)})"


def runs_label(n):
    return f"{n} run{'s' if n > 1 else ''}"


def spread(values, fmt="{:.2f}", count=True):
    """min / median / max over runs, with how many (unless the caller says it once)."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    runs_ = f" ({runs_label(len(values))})" if count else ""
    if len(values) == 1:
        return fmt.format(values[0]) + runs_
    return f"{fmt.format(min(values))} / {fmt.format(statistics.median(values))} / {fmt.format(max(values))}" + runs_


ROWS = [("ours", "bpf-ratelimit"), ("ref-fair", "reference, our burst"), ("ref-containerd", "reference, containerd burst")]
CELL = lambda c: (c["rtt_ms"], c["rate_bps"] or 0, c["way"], c["cc"], c["flows"])


def matrix_ratios(run, row, value="wire_bps"):
    """{cell: `value` ÷ what the cell could carry} for one row of one matrix
    run: min(limit, what the path carried unshaped in that run) for 1 flow;
    the limit for 8 flows (the bench runs the path unshaped with 1 flow
    only, and 8 flows fill more of it than 1)."""
    cells = run["matrix"]["cells"]
    path = {(c["rtt_ms"], c["way"], c["cc"]): c[value] for c in cells if c["row"] == "unshaped" and c["flows"] == 1}
    out = {}
    for c in cells:
        if c["row"] == row:
            p = path.get((c["rtt_ms"], c["way"], c["cc"])) if c["flows"] == 1 else c["rate_bps"]
            out[CELL(c)] = c[value] / min(c["rate_bps"], p) if p else None
    return out


def latency_cell(got):
    """Responses beside a download, over the runs that measured them."""
    if not got:
        return "—"
    answered = sum(l["beside_samples"] for l in got)
    sent = answered + sum(l.get("beside_failed", 0) for l in got)
    return (f"p50 {spread([l['beside_p50_ms'] for l in got], '{:.1f}', False)}, p99 {spread([l['beside_p99_ms'] for l in got], '{:.1f}', False)} ms "
            f"({runs_label(len(got))}; {answered} of {sent} answered)")


def matrix_rows(runs):
    full = runs[0]
    by_row = {row: [[c for c in run["matrix"]["cells"] if c["row"] == row] for run in runs] for row, _ in ROWS}
    n = len(by_row["ours"][0])
    rtts = ", ".join("LAN" if r == 0 else f"{r:g} ms" for r in full["meta"]["rtts_ms"])
    rates = ", ".join(r[0] for r in full["meta"]["rates"])

    def resent(row):
        worst = max(c["resent_share"] for cells in by_row[row] for c in cells)
        over = {CELL(c) for cells in by_row[row] for c in cells if c["resent_share"] > 0.05}
        return f"{100 * worst:.1f}% ({len(over)})"

    lines = [
        (f"bulk TCP on the wire ÷ min(limit, what the path carries unshaped with 1 flow; the limit for 8): {n} cells ({rtts} × {rates} × CUBIC, BBR × 1, 8 flows × both ways)",
         [cells_spread([matrix_ratios(run, row) for run in runs]) for row, _ in ROWS]),
        ("segments resent: the most in a cell of any run (cells over 5% in any run)", [resent(row) for row, _ in ROWS]),
        ("Jain's index over 8 flows: the lowest cell of a run",
         [spread([min(c["jain"] for c in cells if c["flows"] == 8 and c["jain"] is not None) for cells in by_row[row]], "{:.3f}") for row, _ in ROWS]),
    ]
    for rate in ("10M", "100M"):
        got = {row: [l for run in runs for l in run["matrix"]["latency"] if l["rtt_ms"] == 0 and l["rate"] == rate and l["row"] == row] for row, _ in ROWS}
        if any(got.values()):
            lines.append((f"a 16 KB response on a fresh connection beside the pod's own download, {rate}, LAN",
                          [latency_cell(got[row]) for row, _ in ROWS]))
    lines.append(("an idle pod's 16 KB response, p50 minus the unshaped path's, at any RTT: the most in a run",
                  [spread([max(l["idle_response_p50_ms"] - l["unshaped_response_p50_ms"] for l in run["matrix"]["latency"] if l["row"] == row) for run in runs], "{:.1f} ms")
                   for row, _ in ROWS]))
    return [(what, figures, cite(*runs)) for what, figures in lines]


def cells():
    """Each matrix cell: on the wire ÷ what it could carry (matrix_ratios),
    median (min–max) over the matrix runs, for every row."""
    runs_ = matrix_runs()
    per_row = {row: over_runs([matrix_ratios(run, row) for run in runs_]) for row, _ in ROWS}
    resent = {row: over_runs([{CELL(c): c["resent_share"] for c in run["matrix"]["cells"] if c["row"] == row} for run in runs_]) for row, _ in ROWS}
    out = ["| RTT | limit | way | CC | flows | " + " | ".join(name for _, name in ROWS) + " |", "|---" * (5 + len(ROWS)) + "|"]

    def fig(values, shares):
        if not values:
            return "—"
        m = f"{statistics.median(values):.3f} ({span(values)})"
        return m + (f"; resent up to {100 * max(shares):.1f}%" if shares and max(shares) > 0.01 else "")

    for key in sorted(per_row["ours"]):
        rtt, bps, way, cc, flows = key
        rate = next(r for r, b in runs_[0]["meta"]["rates"] if b == bps)
        out.append(f"| {'LAN' if rtt == 0 else f'{rtt:g} ms'} | {rate} | {way} | {cc} | {flows} | "
                   + " | ".join(fig(per_row[row].get(key), resent[row].get(key)) for row, _ in ROWS) + " |")
    return "\n".join(out) + f"\n\nMedian (min–max) over {len(runs_)} runs: " + cite(*runs_) + ". Resent shown where a run resent over 1%.\n"


def policer_rows(runs):
    rows = []
    for lo, hi, where in ((0, 10, "LAN to 10 ms"), (10.01, 1000, "20 to 50 ms")):
        per_run = [{k: v for k, v in matrix_ratios(run, "ours-policer", "goodput_bps").items() if k[2] == "download" and lo <= k[0] <= hi} for run in runs]
        shares = [c["resent_share"] for run in runs for c in run["matrix"]["cells"]
                  if c["row"] == "ours-policer" and c["way"] == "download" and lo <= c["rtt_ms"] <= hi]
        rows.append((f"bpf-ratelimit with `ingressQueue: false` (the policer), download at {where}: TCP goodput ÷ min(limit, the path's goodput unshaped with 1 flow; the limit for 8), {len(per_run[0])} cells; the most resent",
                     [f"{cells_spread(per_run)}; {100 * max(shares):.1f}%", "—", "—"], cite(*runs)))
    return rows


def wire_rows(runs):
    rows = []
    n = len({s["shape"] for s in runs[0]["wire"]})

    def fig(row):
        got = [[s for s in run["wire"] if s["row"] == row] for run in runs]
        sent = cells_spread([{s["shape"]: s["wire_ratio"] for s in shapes if s["wire_ratio"] >= 0.01} for shapes in got])
        refused = sorted({s["shape"].split(",")[0] for shapes in got for s in shapes if s["wire_ratio"] < 0.01})
        return sent + (f" ({', '.join(refused)}: refused, nothing sent)" if refused else "")

    rows.append((f"every traffic shape a 10M pod makes ({n}: TCP, UDP at 2×, tiny writes, MSS 88, GSO, fragments, raw sockets, AF_XDP, floods, a tunnel), LAN: on the wire ÷ the limit",
                 [fig(row) for row, _ in ROWS], cite(*runs)))
    frag = [s for run in runs for s in run["wire"] if "fragments" in s["shape"] and "download" in s["shape"]]
    if frag:
        rows.append(("UDP in 8000-byte datagrams at 2× into the pod: delivered ÷ the limit",
                     [spread([s["goodput_ratio"] for s in frag if s["row"] == row], "{:.3f}") for row, _ in ROWS], cite(*runs)))
    return rows


def main_cni_rows(runs):
    rows = []
    for form in sorted({r["form"] for run in runs for r in run["main_cni"]}):
        got = [r for run in runs for r in run["main_cni"] if r["form"] == form]

        def fig(row):
            mine = [r for r in got if r["row"] == row]
            if not mine:
                return "—"
            failed = sum(1 for r in mine if r["add_error"])
            if failed:
                return f"ADD fails ({failed} of {len(mine)} runs)"
            return (f"{spread([r['tcp_download'] for r in mine], '{:.3f}', False)}; "
                    f"{spread([r['tcp_upload'] for r in mine], '{:.3f}', False)} ({runs_label(len(mine))})")

        rows.append((f"under an emulated eBPF main CNI, {form}: 100M TCP on the wire ÷ the limit, download; upload (min / median / max)", [fig(row) for row, _ in ROWS], cite(*runs)))
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


def bpf_rows(runs):
    per_run = [ns / n for run in runs for progs in run["matrix"]["bpf_stats"].values() for ns, n in progs.values() if n]
    return [("BPF run time per program run (bpf_stats, the cgroup and sock_ops programs, 10M–1G, every matrix run), ns",
             [span(per_run, "{:.0f}"), "—", "—"], cite(*runs))]


def table(rows):
    out = ["| measured | " + " | ".join(name for _, name in ROWS) + " | from |", "|---|---|---|---|---|"]
    for what, figures, source in rows:
        out.append(f"| {what} | " + " | ".join(figures) + f" | {source} |")
    return "\n".join(out) + "\n\nGenerated by `bench/publish.py` from the results files in the last column (each links to its tables and gives the commit it was made at).\n"


def numbered(prefix):
    """bench/results/PREFIX, PREFIX-2, PREFIX-3, ...: one part's repeated runs."""
    return [load(d.name) for d in sorted(RESULTS.iterdir()) if re.fullmatch(re.escape(prefix) + r"(-\d+)?", d.name) and (d / "results.json").exists()]


def matrix_runs():
    """The full run's matrix and its repeats (bench/results/matrix-N, run with
    the same rows, rates and RTTs)."""
    full = load("")
    runs_ = [full] + numbered("matrix")
    for r in runs_[1:]:
        if (r["meta"]["rtts_ms"], r["meta"]["rates"]) != (full["meta"]["rtts_ms"], full["meta"]["rates"]):
            raise Unpublishable(f"{r['_source']}: its matrix is not the full run's (RTTs or rates differ)")
    return runs_


def with_part(part):
    """Every run that has `part`: the full run, its own directories, the repeats."""
    dirs = [""] + sorted(d.name for d in RESULTS.iterdir() if (d / "results.json").exists())
    return [r for r in map(load, dirs) if part in r["meta"]["parts"]]


def all_rows():
    matrix = matrix_runs()
    rows = matrix_rows(matrix)
    rows += policer_rows(numbered("policer"))
    rows += wire_rows(with_part("wire"))
    rows += main_cni_rows(with_part("maincni"))
    rows += timing_rows(numbered("timing"))
    # busy-policer*: ours beside ours without the ingress queue (issue 25:
    # what the queue costs); its rows of ours join the busy-node runs'.
    rows += busy_rows(numbered("busy-node") + numbered("busy-policer"))
    rows += bpf_rows(matrix)
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
    busy = numbered("busy-tradeoff")
    lat = numbered("latency-rows")
    if not busy or not lat:
        raise Unpublishable("no bench/results/busy-tradeoff*/ or latency-rows*/ results (bench/README.md says how to make them)")
    out = ["| `ingressTradeoff` | " + " | ".join(f"busy node {b['pods']} × {b['rate']}, {b['way']}: CPU per Gbit/s ÷ the reference's; lowest pod" for b in busy[0]["busy_node"] if b["row"] == "ours")
           + " | " + " | ".join(f"16 KB responses beside the pod's download, {l['rate']}, {'LAN' if l['rtt_ms'] == 0 else str(l['rtt_ms']) + ' ms'}" for l in lat[0]["matrix"]["latency"] if l["row"] == "ours") + " |"]
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
            cells.append(latency_cell([x for run in lat for x in run["matrix"]["latency"] if (x["row"], x["rate"], x["rtt_ms"]) == (row, l["rate"], l["rtt_ms"])]))
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n\nFrom " + cite(*busy, *lat) + ".\n"


LATENCY_ROWS = [("ours", "bpf-ratelimit"), ("ours-low-cpu", "bpf-ratelimit, `ingressTradeoff: cpu`"), ("ref-our-queue", "reference, our burst and our queue depth"),
                ("ref-fair", "reference, our burst"), ("ref-containerd", "reference, containerd burst")]


def latency():
    """16 KB responses on fresh connections beside the pod's own download,
    open loop (the same requests at the same times for every row), from
    the latency-rows* runs."""
    runs_ = numbered("latency-rows")
    if not runs_:
        raise Unpublishable("no bench/results/latency-rows*/ results (bench/README.md says how to make them)")
    keys = sorted({(l["rtt_ms"], l["rate_bps"], l["rate"]) for r in runs_ for l in r["matrix"]["latency"]})
    out = ["| shaper | " + " | ".join(f"{rate}, {'LAN' if rtt == 0 else f'{rtt:g} ms'}: responses; the download on the wire ÷ the limit" for rtt, _, rate in keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
    for row, name in LATENCY_ROWS:
        cells = []
        for rtt, bps, rate in keys:
            got = [l for r in runs_ for l in r["matrix"]["latency"] if (l["row"], l["rtt_ms"], l["rate"]) == (row, rtt, rate)]
            cells.append(f"{latency_cell(got)}; {span([l['beside_download_wire_ratio'] for l in got])}" if got else "—")
        if any(c != "—" for c in cells):
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n\nFrom " + cite(*runs_) + ".\n"


KNOCKOUTS = [("none", "nothing (the default build)"), ("window_clamp", "the receive windows' clamp (sock_ops sets no TCP_WINDOW_CLAMP)"),
             ("sock_ops", "sock_ops altogether (no pacing, no windows)"), ("cgroup_ingress", "the cgroup ingress hook (no receive accounting)"),
             ("cgroup_egress", "the cgroup egress hook (no egress bucket, no sender accounting)"),
             ("guard", "the egress guard (host side and pod side)"), ("door", "the ingress queue's door (frames go into the queue unsorted)")]


def knockout():
    """bench/knockout.sh: the busy node with one part of the datapath turned
    into a pass-through at a time, each beside the reference in its own run."""
    base = RESULTS / "knockout"
    names = sorted(d.name for d in base.iterdir() if (d / "results.json").exists()) if base.is_dir() else []
    if not names:
        raise Unpublishable("no bench/results/knockout/*/ results (bench/README.md says how to make them)")
    by_variant = {}
    for name in names:
        variant = name.rsplit("-", 1)[0]
        if variant not in dict(KNOCKOUTS):
            raise Unpublishable(f"bench/results/knockout/{name}: unknown variant {variant}")
        by_variant.setdefault(variant, []).append(load(f"knockout/{name}"))
    shapes = sorted({(b["pods"], b["rate"]) for runs_ in by_variant.values() for r in runs_ for b in r["busy_node"]})
    if len(shapes) != 1:
        raise Unpublishable(f"bench/results/knockout/: runs of more than one busy-node shape: {shapes}")

    def ratios(runs_, way):
        out = []
        for r in runs_:
            got = {b["row"]: b for b in r["busy_node"] if b["way"] == way}
            if "ours" in got and "ref-fair" in got:
                out.append(got["ours"]["cpu_per_gbps"] / got["ref-fair"]["cpu_per_gbps"])
        return out

    def lowest(runs_, way):
        return [b["goodput_min"] for r in runs_ for b in r["busy_node"] if b["way"] == way and b["row"] == "ours"]

    # How many skbs carried a Gbit (thousands: into the pod's queue for a
    # download, through its cgroup egress hook for an upload), and our
    # programs' share of the node's busy CPU (bpf_stats over the window).
    counted = {"download": "redirect_to_queue", "upload": "shape_egress_prog"}

    def skbs_and_share(runs_, way):
        per_gbit, share = [], []
        for r in runs_:
            for b in r["busy_node"]:
                if b["way"] != way or b["row"] != "ours":
                    continue
                gbit = b["delivered_gbps"] * b["window_s"]
                busy_s = b["cpu_busy"] * r["meta"]["cpus"] * b["window_s"]
                if b["bpf"].get(counted[way]) and gbit > 0:
                    per_gbit.append(b["bpf"][counted[way]][1] / gbit / 1000)
                if busy_s > 0:
                    share.append(sum(ns for ns, _ in b["bpf"].values()) / 1e9 / busy_s)
        return f"{spread(per_gbit, '{:.1f}', count=False)}; {spread(share, '{:.3f}', count=False)}"

    default = {way: statistics.median(ratios(by_variant["none"], way)) for way in ("download", "upload")} if "none" in by_variant else None
    pods, rate = shapes[0]
    out = [f"| knocked out ({pods} pods × {rate}, all at once) | download: CPU per Gbit/s ÷ the reference's (min / median / max); the median ÷ the default build's | "
           "upload: the same | the lowest pod's goodput ÷ limit, download; upload | download: thousands of skbs into the queue per Gbit; our programs' share of the busy CPU | "
           "upload: thousands of skbs through the cgroup egress hook per Gbit; the same share | from |", "|---|---|---|---|---|---|---|"]
    for variant, what in KNOCKOUTS:
        runs_ = by_variant.get(variant)
        if not runs_:
            continue
        cells = []
        for way in ("download", "upload"):
            got = ratios(runs_, way)
            rel = f"; {statistics.median(got) / default[way]:.2f}" if default and got and variant != "none" else ""
            cells.append(spread(got) + rel)
        out.append(f"| {what} | {cells[0]} | {cells[1]} | {span(lowest(runs_, 'download'))}; {span(lowest(runs_, 'upload'))} | "
                   f"{skbs_and_share(runs_, 'download')} | {skbs_and_share(runs_, 'upload')} | {cite(*runs_)} |")
    return "\n".join(out) + "\n"


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


GENERATORS = {"headline": headline, "figures": figures, "cells": cells, "runs": runs, "tradeoff": tradeoff, "latency": latency, "knockout": knockout}


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
