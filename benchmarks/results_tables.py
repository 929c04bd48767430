"""benchmarks/RESULTS.md's performance tables, generated from results folders (no hand-typed numbers).

  python benchmarks/results_tables.py benchmarks/results/<date>-<gpu> [MORE_DIRS]   # rewrite the tables
  python benchmarks/results_tables.py --check                                      # exit 1 if stale

The tables sit between `<!-- perf:begin results=DIR[,DIR...] -->` and `<!-- perf:end -->` in
RESULTS.md; the folders they were made from are named there (relative to the repository root), so
--check (and tests/test_bench_tools.py) can remake them and compare. Several folders: a full run
first, then runs of groups added later (each shown with its own GPU, date and commit). Per folder
and per group of forward.json / backward.json: one row per configuration, one column per system
(median ms), the measured density, and our speedup over the fastest peer; then the plots.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN = re.compile(r"<!-- perf:begin results=(\S+) -->")
END = "<!-- perf:end -->"

# What each group is called, in the order shown; groups not listed are left out.
TITLES = {
    "seed-train": "Training shapes of the original flash-dmattn README (B=1, H=2, H_kv=1, D=64, causal, top-W keys per row)",
    "seed-infer": "Inference shapes of the original flash-dmattn README (Q=1, B=1, H=2, H_kv=1, D=64, top-W keys)",
    "models": "Model shapes (dense causal, and a 12.5% top-W mask)",
    "shapes": "Batch, heads, GQA ratio and head dim (around B=2 H=16 H_kv=4 D=128 L=4096, a 12.5% top-W mask + bias)",
    "density": "Time against density (one shape, top-w keys per row)",
    "dense": "Dense, no mask (issue 3/4 targets)",
    "bias": "Per-key bias, causal (issue 3/4 targets)",
    "sparse": "Sparse (issue 3/4 targets)",
    "decode": "Decode",
}
OURS = ("ours sparse", "ours")  # the system a row's speedup is for, first found
NOT_A_PEER = ("ours", "flex BlockMask build")  # prefixes of systems our speedup is not taken over
HEADS = re.compile(r"\bH=(\d+) H_kv=(\d+)\b")

# Runs made before issue 21 handed SDPA its K/V with the kv heads repeated to H (no enable_gqa=True)
# and recorded no "sdpa_gqa" in their meta: their GQA rows say so.
REPEATED_KV_NOTE = ("> SDPA ran this table's GQA rows (H_kv < H) on K/V with the kv heads repeated to H, not with "
                    "`enable_gqa=True`: its times there are too slow (see the top of this page).\n")


def _ms(x):
    return f"{x:.3f}" if x is not None else "n/a"


def pivot(rows: list[dict]) -> str:
    """One markdown table: a row per config, a column per system."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    configs = list(dict.fromkeys(r["config"] for r in rows))
    cell = {(r["config"], r["system"]): r for r in rows}
    lines = ["| config | density | " + " | ".join(f"{s} (ms)" for s in systems) + " | ours vs fastest peer |",
             "|---|---|" + "---|" * len(systems) + "---|"]
    for c in configs:
        mine = next((cell[(c, s)] for s in OURS if (c, s) in cell), None)
        peers = [cell[(c, s)]["ms"] for s in systems
                 if (c, s) in cell and cell[(c, s)]["ms"] and not s.startswith(NOT_A_PEER)]
        speedup = (f"{min(peers) / mine['ms']:.2f}x" if mine and mine["ms"] and peers else "-")
        dens = f"{mine['density']:.3f}" if mine else "-"
        lines.append(f"| {c} | {dens} | " + " | ".join(_ms(cell[(c, s)]["ms"]) if (c, s) in cell else "-"
                                                      for s in systems) + f" | {speedup} |")
    return "\n".join(lines)


def sdpa_saw_repeated_heads(meta: dict, rows: list[dict]) -> bool:
    """True when a group's SDPA peer ran a GQA row (H_kv < H) with the kv heads repeated."""
    if "sdpa_gqa" in meta:
        return False
    gqa = {r["config"] for r in rows if (m := HEADS.search(r["config"])) and m.group(1) != m.group(2)}
    return any(r["config"] in gqa and r["system"].startswith("sdpa") for r in rows)


def render(results: Path) -> str:
    """The tables for one results folder (links relative to RESULTS.md's folder)."""
    rel = results.resolve().relative_to(RESULTS.parent).as_posix()
    out = []
    for name in ("forward", "backward"):
        path = results / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        meta, rows = data["meta"], data["rows"]
        mode = rows[0]["mode"] if rows else name
        # The commit too: one day on one GPU can hold several runs.
        out.append(f"## {name.capitalize()} ({meta['gpu']}, {meta['date']}, {meta['commit'][:7]})\n")
        # A run of some groups says so (runs before "all_groups" was recorded ran them all).
        partial = "all_groups" in meta and set(meta["groups"]) != set(meta["all_groups"])
        groups = f" --only {','.join(meta['groups'])}" if partial else ""
        out.append(f"`python benchmarks/{name}_performance.py{' --quick' if meta.get('quick') else ''}{groups}` at "
                   f"commit `{meta['commit'][:12]}`, torch {meta['torch']}, CUDA {meta['cuda']}, driver {meta['driver']}. "
                   f"Median GPU time in ms over rotated inputs; full figures (TFLOP/s on kept pairs and on "
                   f"computed tiles, peak memory, notes) in [{rel}/{name}.md]({rel}/{name}.md).\n")
        for group, title in TITLES.items():
            g = [r for r in rows if r["group"] == group]
            if g:
                modes = sorted({r["mode"] for r in g})
                note = REPEATED_KV_NOTE + "\n" if sdpa_saw_repeated_heads(meta, g) else ""
                out.append(f"### {title}, {' / '.join(modes) if modes else mode}\n\n{note}{pivot(g)}\n")
        for plot in (f"{name}-seqlen.png", f"{name}-density.png"):
            if (results / plot).exists():
                out.append(f"![{name}: {plot[len(name) + 1:-4]}]({rel}/{plot})\n")
    return "\n".join(out)


def section(folders: list[Path]) -> str:
    rels = ",".join(f.resolve().relative_to(ROOT).as_posix() for f in folders)
    return f"<!-- perf:begin results={rels} -->\n" + "\n".join(render(f) for f in folders) + END


def current(text: str):
    """(results folders named by the marker, the generated part's full text) or (None, None)."""
    m = BEGIN.search(text)
    if not m or END not in text[m.end():]:
        return None, None
    end = text.index(END, m.end()) + len(END)
    return [ROOT / f for f in m.group(1).split(",")], text[m.start():end]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="*", type=Path, help="results folders (default: the ones RESULTS.md names)")
    ap.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md's tables differ from a fresh render")
    args = ap.parse_args()
    text = RESULTS.read_text()
    named, old = current(text)
    if old is None:
        sys.exit(f"{RESULTS} has no '<!-- perf:begin results=DIR -->' ... '<!-- perf:end -->' section")
    results = args.results or named
    new = section(results)
    if args.check:
        if new != old:
            sys.exit(f"{RESULTS.name} is stale: run python benchmarks/results_tables.py {' '.join(map(str, results))}")
        print(f"{RESULTS.name} matches", *results)
        return
    RESULTS.write_text(text.replace(old, new))
    print(f"{RESULTS.name} rewritten from", *results)


if __name__ == "__main__":
    main()
