#!/usr/bin/env python3
"""scripts/bench_report.py — one self-contained HTML report of kata-rs' benchmark figures.

    scripts/bench_report.py [--in DIR] [--out FILE]

Reads what the benches wrote (DIR, default $KATA_RS_BENCH_OUT, else
$CARGO_TARGET_DIR/bench-report, else target/bench-report: boot_phases.json, density.json
and image_pss.json from `cargo bench -p kata-benches --bench boot_phases|density|image_pss`)
and draws, as
inline SVG (python3 standard library only; no plotting package):

  * start latency, kata-rs against runc, every sample and its median and p99;
  * the boot phases, as a stacked bar of their medians;
  * host PSS per pod against the pod count (stacked by process), with the issue's target;
  * starts per second against concurrency, with min(N, cores) x the single-start rate;
  * QEMU's PSS per VM booted from the initramfs and from Kata's image on DAX.

Writes FILE (default DIR/index.html). A missing input leaves its figure out and says so.
"""
import argparse
import html
import json
import math
import os
import sys
import time

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def esc(s):
    return html.escape(str(s), quote=True)


def median(v):
    v = sorted(x for x in v if x is not None and math.isfinite(x))
    return v[len(v) // 2] if v else float("nan")


def pct(v, p):
    v = sorted(x for x in v if x is not None and math.isfinite(x))
    if not v:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(v)))
    return v[min(rank, len(v)) - 1]


def svg(width, height, body):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
            + "".join(body) + "</svg>")


def text(x, y, s, anchor="start", size=12, weight="normal", fill="#222"):
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'font-weight="{weight}" fill="{fill}">{esc(s)}</text>')


def latency_chart(series):
    """series: [(label, [ms...], colour)] drawn as strips on a log-scale x axis."""
    series = [(l, [x for x in v if x > 0], c) for l, v, c in series if v]
    if not series:
        return None
    lo = min(min(v) for _, v, _ in series)
    hi = max(max(v) for _, v, _ in series)
    lo_d, hi_d = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if hi_d == lo_d:
        hi_d += 1
    w, left, right, row = 760, 170, 30, 56
    h = 40 + row * len(series) + 40
    span = w - left - right

    def x(v):
        return left + (math.log10(v) - lo_d) / (hi_d - lo_d) * span

    body = []
    for d in range(lo_d, hi_d + 1):
        for m in (1, 2, 5):
            v = m * 10 ** d
            if 10 ** lo_d <= v <= 10 ** hi_d:
                body.append(f'<line x1="{x(v):.1f}" y1="30" x2="{x(v):.1f}" y2="{h-35}" '
                            f'stroke="#ddd"/>')
                body.append(text(x(v), h - 20, f"{v:g} ms", "middle", 10))
    for i, (label, v, colour) in enumerate(series):
        y = 40 + row * i + row / 2
        body.append(text(left - 10, y - 4, label, "end", 12, "bold"))
        body.append(text(left - 10, y + 12,
                         f"n={len(v)} p50 {median(v):.0f} p99 {pct(v, 99):.0f} ms", "end", 10))
        for j, s in enumerate(sorted(v)):
            jitter = ((j * 7919) % 17 - 8) * 1.3
            body.append(f'<circle cx="{x(s):.1f}" cy="{y + jitter:.1f}" r="3" fill="{colour}" '
                        f'fill-opacity="0.6"><title>{s:.1f} ms</title></circle>')
        m = median(v)
        body.append(f'<line x1="{x(m):.1f}" y1="{y-16}" x2="{x(m):.1f}" y2="{y+16}" '
                    f'stroke="#000" stroke-width="2"/>')
    body.append(text(left + span / 2, h - 4, "latency (log scale); bar: median", "middle", 11))
    return svg(w, h, body)


def stacked_bar(names, values, unit="ms"):
    vals = [0 if (v is None or not math.isfinite(v) or v < 0) else v for v in values]
    total = sum(vals)
    if total <= 0:
        return None
    w, left, right = 760, 20, 20
    span = w - left - right
    body, x0 = [], left
    for i, (n, v) in enumerate(zip(names, vals)):
        wd = v / total * span
        colour = PALETTE[i % len(PALETTE)]
        body.append(f'<rect x="{x0:.1f}" y="20" width="{max(wd, 0):.1f}" height="40" '
                    f'fill="{colour}"><title>{esc(n)}: {v:.0f} {unit}</title></rect>')
        if wd > 38:
            body.append(text(x0 + wd / 2, 45, f"{v:.0f}", "middle", 11, fill="#fff"))
        x0 += wd
    body.append(text(left, 78, f"total {total:.0f} {unit}", "start", 11))
    cols, lh = 3, 18
    for i, (n, v) in enumerate(zip(names, values)):
        cx = left + (i % cols) * (span / cols)
        cy = 100 + (i // cols) * lh
        body.append(f'<rect x="{cx:.1f}" y="{cy-10}" width="12" height="12" '
                    f'fill="{PALETTE[i % len(PALETTE)]}"/>')
        shown = "n/a" if v is None or not math.isfinite(v) else f"{v:.0f} {unit}"
        body.append(text(cx + 18, cy, f"{n}: {shown}", "start", 11))
    h = 100 + ((len(names) + cols - 1) // cols) * lh + 10
    return svg(w, h, body)


def bars(groups, keys, ylabel, target=None, target_label=None, line=None, line_label=None):
    """groups: [(xlabel, {key: value})] as stacked bars; optional horizontal target and a
    per-group line (list of values) drawn as points joined."""
    if not groups:
        return None
    top = max(sum(max(g.get(k, 0) or 0, 0) for k in keys) for _, g in groups)
    if target:
        top = max(top, target)
    if line:
        top = max([top] + [v for v in line if v and math.isfinite(v)])
    top = top * 1.15 or 1
    w, h, left, bottom, t = 760, 300, 60, 40, 20
    plot_h = h - bottom - t
    step = (w - left - 20) / len(groups)
    bw = min(60, step * 0.6)

    def y(v):
        return t + plot_h - v / top * plot_h

    body = [f'<line x1="{left}" y1="{t}" x2="{left}" y2="{t+plot_h}" stroke="#888"/>',
            f'<line x1="{left}" y1="{t+plot_h}" x2="{w-20}" y2="{t+plot_h}" stroke="#888"/>']
    for k in range(6):
        v = top / 1.15 * k / 5
        body.append(text(left - 6, y(v) + 4, f"{v:.3g}", "end", 10))
        body.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w-20}" y2="{y(v):.1f}" '
                    f'stroke="#eee"/>')
    pts = []
    for i, (label, g) in enumerate(groups):
        cx = left + step * (i + 0.5)
        acc = 0
        for j, k in enumerate(keys):
            v = max(g.get(k, 0) or 0, 0)
            if v <= 0:
                continue
            body.append(f'<rect x="{cx-bw/2:.1f}" y="{y(acc+v):.1f}" width="{bw:.1f}" '
                        f'height="{y(acc)-y(acc+v):.1f}" fill="{PALETTE[j % len(PALETTE)]}">'
                        f'<title>{esc(k)}: {v:.2f}</title></rect>')
            acc += v
        body.append(text(cx, y(acc) - 4, f"{acc:.3g}", "middle", 10, "bold"))
        body.append(text(cx, t + plot_h + 16, label, "middle", 11))
        if line and i < len(line) and line[i] is not None:
            pts.append((cx, y(line[i])))
    if pts:
        body.append('<polyline fill="none" stroke="#000" stroke-dasharray="4 3" points="'
                    + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        for a, b in pts:
            body.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="#000"/>')
    if target:
        body.append(f'<line x1="{left}" y1="{y(target):.1f}" x2="{w-20}" y2="{y(target):.1f}" '
                    f'stroke="#c00" stroke-dasharray="6 4"/>')
        body.append(text(w - 22, y(target) - 4, target_label or "target", "end", 10,
                         fill="#c00"))
    body.append(f'<text transform="translate(14,{t+plot_h/2}) rotate(-90)" '
                f'text-anchor="middle" font-size="11">{esc(ylabel)}</text>')
    legend = list(keys) + ([line_label] if line_label else [])
    lx = left + 10
    for j, k in enumerate(legend):
        colour = "#000" if line_label and k == line_label else PALETTE[j % len(PALETTE)]
        body.append(f'<rect x="{lx}" y="{h-14}" width="10" height="10" fill="{colour}"/>')
        body.append(text(lx + 14, h - 5, k, "start", 10))
        lx += 24 + 7 * len(k)
    return svg(w, h + 6, body)


def image_section(image):
    """QEMU's PSS per VM, initramfs against Kata's image on DAX (benches/image_pss.rs): the
    median of each kind's runs, split into the image mapping and the rest."""
    kinds = []
    for kind in ("initramfs", "image (nvdimm, dax)"):
        runs = [r for r in image["runs"] if r.get("guest") == kind]
        if not runs:
            continue
        pss = median([r["qemu_pss_mib"] for r in runs])
        mapping = median([r["image_mapping_pss_mib"] for r in runs])
        kinds.append((kind, {"image mapping": mapping, "rest of QEMU": max(pss - mapping, 0.0)},
                      pss, median([r["guest_ram_touched_mib"] for r in runs])))
    if not kinds:
        return None
    chart = bars([(k, v) for k, v, _, _ in kinds], ["rest of QEMU", "image mapping"],
                 "QEMU PSS per VM (MiB)")
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{p:.1f}</td><td>{v['image mapping']:.1f}</td>"
                   f"<td>{t:.1f}</td></tr>" for k, v, p, t in kinds)
    ratio = ""
    if len(kinds) == 2 and kinds[0][2] > 0:
        ratio = f" Image on DAX over initramfs: {kinds[1][2] / kinds[0][2]:.2f}&times;."
    return ("Guest image: initramfs and Kata's image on DAX",
            f"<p>{image.get('n', '?')} VMs of each kind (guest {image.get('guest_mib', '?')} "
            "MiB) side by side; QEMU's PSS per VM, its image mapping's share (DAX pages from "
            f"the host's page cache, shared by every VM) and the guest RAM it touched.{ratio}</p>"
            "<table><tr><th>guest</th><th>QEMU PSS MiB</th><th>image mapping PSS MiB</th>"
            f"<th>guest RAM touched MiB</th></tr>{rows}</table>", chart)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    default_in = os.environ.get("KATA_RS_BENCH_OUT") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target"), "bench-report")
    ap.add_argument("--in", dest="inp", default=default_in)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = a.out or os.path.join(a.inp, "index.html")
    phases = load(os.path.join(a.inp, "boot_phases.json"))
    density = load(os.path.join(a.inp, "density.json"))
    image = load(os.path.join(a.inp, "image_pss.json"))
    sections, missing = [], []

    if density:
        kata = list(density.get("kata_start_ms") or [])
        runc = density.get("runc_true_ms") or []
        series = [("kata-rs: build() to ready", kata, PALETTE[0])]
        if phases:
            series.append(("kata-rs: boot_phases runs", phases.get("total_ms") or [], PALETTE[3]))
        series.append(("runc: run true", runc, PALETTE[1]))
        chart = latency_chart(series)
        if chart:
            ratio = median(kata) / median(runc) if runc and kata else float("nan")
            sections.append(("Start latency: kata-rs and runc",
                             f"<p>A kata-rs sandbox start (a micro-VM booted to a ready agent) "
                             f"against a runc container's whole run of <code>true</code>, same "
                             f"host, same run. Median ratio {ratio:.1f}&times;.</p>", chart))
    else:
        missing.append("density.json (cargo bench -p kata-benches --bench density)")

    if phases:
        names, med = phases["phases"], phases["median_ms"]
        chart = stacked_bar(names, med)
        if chart:
            sections.append(("Boot phases (median of "
                             f"{len(phases.get('rounds_ms') or [])} boots)",
                             "<p>Host-side phases are <code>BootTimings</code>; firmware, kernel "
                             "to /init and /init to agent are split with the guest's clock "
                             "(see benches/boot_phases.rs).</p>", chart))
    else:
        missing.append("boot_phases.json (cargo bench -p kata-benches --bench boot_phases)")

    if density and density.get("memory"):
        keys = ["qemu", "vsock", "virtiofsd", "runtime", "other"]
        groups = [(f"{m['pods']} pod(s)", m["per_pod_by_process_mib"])
                  for m in density["memory"]]
        chart = bars(groups, keys, "PSS per pod (MiB)", target=60 / 1.048576,
                     target_label="target 60 MB")
        rows = "".join(
            f"<tr><td>{m['pods']}</td><td>{m['per_pod_pss_mib']:.1f}</td>"
            f"<td>{m['vmm_overhead_mib']:.1f}</td><td>{m.get('tcg_code_mib', float('nan')):.1f}</td>"
            f"<td>{m['guest_touched_mib']:.1f}</td></tr>"
            for m in density["memory"])
        sections.append(("Host memory per pod",
                         f"<p>Host PSS per pod (guest {density.get('guest_mib')} MiB), by "
                         "process. VMM overhead is QEMU's RSS minus the resident part of its "
                         "guest RAM.</p><table><tr><th>pods</th><th>PSS/pod MiB</th>"
                         "<th>QEMU overhead MiB</th><th>of it TCG code MiB</th>"
                         "<th>guest RAM touched MiB</th></tr>"
                         f"{rows}</table>", chart))
    if density and density.get("starts"):
        st = density["starts"]
        single = next((s["starts_per_s"] for s in st if s["n"] == 1), None)
        cores = density.get("cores", 1)
        ideal = [min(s["n"], cores) * single if single else None for s in st]
        groups = [(f"N={s['n']}", {"starts/s": s["starts_per_s"]}) for s in st]
        chart = bars(groups, ["starts/s"], "starts per second", line=ideal,
                     line_label="min(N, cores) x single rate")
        rows = "".join(
            f"<tr><td>{s['n']}</td><td>{s['starts_per_s']:.2f}</td><td>{s['p50_ms']:.0f}</td>"
            f"<td>{s['p99_ms']:.0f}</td><td>{s['vs_ideal']:.2f}</td>"
            f"<td>{s.get('cpu_s_per_start', float('nan')):.2f}</td></tr>" for s in st)
        not_run = density.get("starts_not_run") or []
        sections.append(("Starts per second",
                         f"<p>N sandboxes built at once on {cores} cores"
                         + (f"; not run: N={not_run}" if not_run else "") +
                         ".</p><table><tr><th>N</th><th>starts/s</th><th>p50 ms</th>"
                         "<th>p99 ms</th><th>vs ideal</th><th>CPU-s per start</th></tr>"
                         + rows + "</table><p>vs ideal: starts/s over min(N, cores) &times; "
                         "the single-start rate. CPU-s per start: the sandbox's host processes' "
                         "and the runtime's CPU time per start; cores / it bounds starts/s.</p>",
                         chart))

    if image and image.get("runs"):
        section = image_section(image)
        if section:
            sections.append(section)
    else:
        missing.append("image_pss.json (cargo bench -p kata-benches --bench image_pss)")

    host = (density or phases or image or {}).get("host_before", {})
    parts = [f"<h2>{esc(t)}</h2>{p}{c}" for t, p, c in sections]
    if missing:
        parts.append("<p><b>Not measured in this report:</b> " + esc("; ".join(missing)) + "</p>")
    doc = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kata-rs benchmark report</title>
<style>body{{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;
text-align:right}}code{{background:#f4f4f4}}</style></head><body>
<h1>kata-rs benchmark report</h1>
<p>Generated {esc(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))} by scripts/bench_report.py
from {esc(os.path.abspath(a.inp))}. Host: {esc(host.get('cpus', '?'))} CPUs, load average
before the run {esc(host.get('loadavg', '?'))}. QEMU TCG unless the host has KVM.</p>
{''.join(parts)}
</body></html>
"""
    with open(out, "w") as f:
        f.write(doc)
    print(f"bench-report: wrote {out} ({len(sections)} figures"
          + (f"; missing {len(missing)} input(s)" if missing else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
