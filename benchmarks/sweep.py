"""Scaling sweep: SAWA (C++, levels 0 and 2) against dense SDPA as the audio length T grows.

    python benchmarks/sweep.py                  # T = 256 ... 65,536, L = T/5; writes results/sweep.{json,md}
    python benchmarks/sweep.py --quick          # T = 256 ... 1,024 (CI smoke)
    python benchmarks/sweep.py --threads 2      # torch.set_num_threads (recorded either way)

Shape B=1, H=1, d=64, float32, window 10, hop 5 (``bench_sawa_cpu`` inputs: all three levels occur).
Providers (see ``bench_sawa_cpu``): cpp (levels 2), cpp-lv0 (levels 0), sdpa-full (no mask: torch's
CPU flash kernel, which streams the L×T scores), sdpa-window (the fixed-window boolean mask, which
torch turns into an L×T float bias: 4 bytes per score).

Time: medians of forward and forward+backward, providers interleaved at each T (7 repetitions while a
call takes < 0.5 s, 3 below 5 s, then 1; each a block of ~100 ms of whole calls per provider).
Peak memory, two ways: ``rss_mb`` the rise of the peak RSS (``VmHWM``, reset first) of a fresh process
across one forward+backward, beyond its inputs and after a warm-up at a tiny size (everything,
page-granular); ``tensor_mb`` the most bytes held at once by tensors allocated during one
forward+backward (the profiler's allocation records; blind to a kernel's std::vector scratch).
A size is skipped, and marked "skipped (memory/time)", when its forward+backward extrapolated from the
previous size (T² for SDPA, T for SAWA, or the measured growth when steeper) would
exceed ``--max-seconds`` (60) or its memory would exceed ``--max-gb`` (8) or 70% of available RAM.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402
import bench_sawa_cpu as sawa_bench  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP_T = [256 * 2**i for i in range(9)]  # 256 ... 65,536
QUICK_T = [256, 512, 1024]
PROVIDERS = ("cpp", "cpp-lv0", "sdpa-full", "sdpa-window")
QUADRATIC = ("sdpa-full", "sdpa-window")
B, H, D = 1, 1, 64
GROWTH = (1024, 16384)  # the linear-growth check: 16x the work


def _probe(name: str, T: int, threads: int | None) -> None:
    """Fresh process: warm the provider at a tiny size, build the inputs, print the peak-RSS rise of one
    forward+backward."""
    _timing.set_threads(threads)
    q, k, v, do = sawa_bench.inputs(B, H, 12, 64, D)
    sawa_bench.closures(name, q, k, v, do)["fwd+bwd"]()
    q, k, v, do = sawa_bench.inputs(B, H, T // 5, T, D)
    f = sawa_bench.closures(name, q, k, v, do)["fwd+bwd"]
    print(json.dumps({"rss_mb": _timing.rss_rise_mb(f)}))


def _available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    return float("inf")


def _predict(prev: dict | None, name: str, T: int) -> tuple[float, float]:
    """(seconds, GB) of one forward+backward at T, extrapolated from the last measured size: time with
    exponent 2 (SDPA) or 1 (SAWA), or the measured one when steeper; memory with 2 for the masked SDPA."""
    if prev is None:
        return 0.0, 0.0
    grow = T / prev["T"]
    p = max(2 if name in QUADRATIC else 1, prev.get("_slope", 0.0))
    seconds = prev["fwd+bwd_ms"] / 1e3 * grow**p
    mem_mb = max(prev.get("rss_mb") or 0, prev.get("tensor_mb") or 0)
    return seconds, mem_mb / 1024 * grow ** (2 if name == "sdpa-window" else 1)


def sweep(Ts, names, threads, max_seconds, max_gb, log=print, rss=True, block_s=0.1) -> list[dict]:
    rows, last = [], {n: None for n in names}
    skipped = set()
    for T in Ts:
        L = T // 5
        active = []
        for n in names:
            secs, gb = _predict(last[n], n, T)
            limit_gb = min(max_gb, 0.7 * _available_gb())
            if n in skipped or secs > max_seconds or gb > limit_gb:
                why = (f"predicted {secs:.0f} s" if secs > max_seconds else f"predicted {gb:.1f} GB") \
                    if n not in skipped else "a smaller size was skipped"
                rows.append({"provider": n, "T": T, "L": L, "skipped": f"skipped (memory/time): {why}"})
                skipped.add(n)
                log(f"T={T:>6} {n:12s} skipped (memory/time): {why}")
                continue
            active.append(n)
        if not active:
            continue
        q, k, v, do = sawa_bench.inputs(B, H, L, T, D)
        fns = {n: sawa_bench.closures(n, q, k, v, do) for n in active}
        slowest = max((last[n]["fwd+bwd_ms"] / 1e3 * (T / last[n]["T"]) ** (2 if n in QUADRATIC else 1)
                       for n in active if last[n]), default=0.0)
        reps = 7 if slowest < 0.5 else 3 if slowest < 5 else 1
        fwd = _timing.interleaved({n: fns[n]["fwd"] for n in active}, reps=reps, target_s=block_s)
        both = _timing.interleaved({n: fns[n]["fwd+bwd"] for n in active}, reps=reps, target_s=block_s)
        for n in active:
            row = {"provider": n, "T": T, "L": L, "reps": reps,
                   "fwd_ms": fwd[n]["median"] * 1e3, "fwd+bwd_ms": both[n]["median"] * 1e3,
                   "tensor_mb": _timing.tensor_peak_mb(fns[n]["fwd+bwd"])}
            probe = _timing.run_isolated([__file__, "--probe", n, str(T), "--threads", str(threads)],
                                         timeout=max(120.0, 20 * row["fwd+bwd_ms"] / 1e3)) if rss else {}
            row["rss_mb"] = probe.get("rss_mb")
            if "error" in probe:
                row["rss_error"] = probe["error"]
            if last[n]:
                grow = row["fwd+bwd_ms"] / last[n]["fwd+bwd_ms"]
                row["_slope"] = math.log(grow) / math.log(T / last[n]["T"])
            rows.append(row)
            last[n] = row
            log(f"T={T:>6} {n:12s} fwd {row['fwd_ms']:10.2f} ms  fwd+bwd {row['fwd+bwd_ms']:10.2f} ms  "
                f"rss {row['rss_mb'] or 0:.1f} MB  tensors {row['tensor_mb']:.1f} MB  (reps {reps})")
        del q, k, v, do, fns
    for r in rows:
        r.pop("_slope", None)
    return rows


def growth(rows, names, lo=GROWTH[0], hi=GROWTH[1]) -> list[dict]:
    """Per provider: time and memory at T=hi over T=lo, and the log-log slopes between them."""
    out = []
    for n in names:
        by_t = {r["T"]: r for r in rows if r["provider"] == n and "fwd+bwd_ms" in r}
        if lo not in by_t or hi not in by_t:
            continue
        a, b = by_t[lo], by_t[hi]
        work = math.log(hi / lo)
        g = {"provider": n, "T": f"{lo} → {hi}", "time_x": b["fwd+bwd_ms"] / a["fwd+bwd_ms"],
             "time_slope": math.log(b["fwd+bwd_ms"] / a["fwd+bwd_ms"]) / work}
        for key in ("rss_mb", "tensor_mb"):
            if a.get(key) and b.get(key) and a[key] > 0 and b[key] > 0:
                g[f"{key[:-3]}_x"] = b[key] / a[key]
                g[f"{key[:-3]}_slope"] = math.log(b[key] / a[key]) / work
        out.append(g)
    return out


def plot(rows, names, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"cpp": ("C0", "o"), "cpp-lv0": ("C2", "s"), "sdpa-full": ("C3", "^"),
              "sdpa-window": ("C1", "v")}
    labels = {"cpp": "SAWA cpp (levels 2)", "cpp-lv0": "SAWA cpp (levels 0)",
              "sdpa-full": "dense SDPA (no mask)", "sdpa-window": "dense SDPA (window mask)"}
    paths = []
    for key, ylabel, fname, extra in (
        ("fwd+bwd_ms", "forward+backward time (ms)", "sweep_time.png", "fwd_ms"),
        ("rss_mb", "peak memory rise (MiB)", "sweep_memory.png", "tensor_mb"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.6))
        Ts_all = sorted({r["T"] for r in rows})
        for n in names:
            pts = [(r["T"], r[key]) for r in rows if r["provider"] == n and r.get(key) and r[key] > 0]
            pts2 = [(r["T"], r[extra]) for r in rows if r["provider"] == n and r.get(extra) and r[extra] > 0]
            c, m = styles.get(n, ("k", "x"))
            if pts:
                ax.plot(*zip(*pts, strict=True), color=c, marker=m, label=labels.get(n, n))
            if pts2:
                lab = "forward only" if extra == "fwd_ms" else "tensor allocations"
                ax.plot(*zip(*pts2, strict=True), color=c, marker=m, ls=":", ms=3, lw=1, alpha=0.7,
                        label=f"{labels.get(n, n)}, {lab}")
            skipped = [r["T"] for r in rows if r["provider"] == n and "skipped" in r]
            if skipped and pts:
                ax.annotate(f"{n}: skipped T≥{skipped[0]}", xy=pts[-1], xytext=(5, -12),
                            textcoords="offset points", fontsize=7, color=c)
        if Ts_all:  # slope guides through the first cpp point
            ref = [r for r in rows if r["provider"] == names[0] and r.get(key)]
            if ref:
                t0, y0 = ref[0]["T"], ref[0][key]
                xs = [t0, Ts_all[-1]]
                ax.plot(xs, [y0, y0 * xs[1] / t0], "k--", lw=0.7, label="∝ T")
                ax.plot(xs, [y0, y0 * (xs[1] / t0) ** 2], "k-.", lw=0.7, label="∝ T²")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (audio frames), L = T/5, B=1, H=1, d=64, float32")
        ax.set_ylabel(ylabel + (": solid fwd+bwd, dotted fwd" if extra == "fwd_ms"
                                else ": solid RSS, dotted tensors"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left" if key == "fwd+bwd_ms" else "lower right")
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    return paths


COLUMNS = ["provider", "T", "L", "fwd_ms", "fwd+bwd_ms", "rss_mb", "tensor_mb", "reps", "skipped"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T = 256 ... 1,024 (CI smoke)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--block-ms", type=float, default=100.0, help="time per provider per repetition")
    ap.add_argument("--max-gb", type=float, default=8.0)
    ap.add_argument("--out", default=None,
                    help="JSON results, plots beside it (default: results/sweep.json; --quick writes none unless "
                         "--out is given)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-rss", action="store_true", help="skip the fresh-process RSS probes (smoke tests)")
    ap.add_argument("--T", type=int, nargs="+", default=None, help="sizes instead of 256 ... 65,536")
    ap.add_argument("--replot", action="store_true", help="only redraw the plots from --out's JSON")
    ap.add_argument("--probe", nargs=2, metavar=("PROVIDER", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        return _probe(args.probe[0], int(args.probe[1]), args.threads)
    if args.replot:
        path = Path(args.out or RESULTS / "sweep.json")
        data = json.loads(path.read_text())
        names = list(dict.fromkeys(r["provider"] for r in data["rows"]))
        return plot(data["rows"], names, path.parent)
    threads = _timing.set_threads(args.threads)
    names = list(PROVIDERS)
    machine = _timing.machine()
    Ts = args.T or (QUICK_T if args.quick else SWEEP_T)
    rows = sweep(Ts, names, threads, args.max_seconds, args.max_gb, rss=not args.no_rss,
                 block_s=args.block_ms / 1e3)
    out = _timing.results_path(args.out, args.quick, "sweep.json")
    g = growth(rows, names, *(GROWTH if set(GROWTH) <= set(Ts) else (Ts[0], Ts[-1])))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots or not out else plot(rows, names, out.parent)
    result = {"machine": machine, "threads": threads, "shape": {"B": B, "H": H, "d": D, "L": "T // 5"},
              "dtype": "float32", "window": sawa_bench.WINDOW, "hop": sawa_bench.HOP,
              "levels_fraction_T4096": sawa_bench.levels_present(B, H, 819, 4096, D),
              "memory_method": "rss_mb: peak-RSS rise of a fresh process (getrusage); tensor_mb: profiler "
                               "allocation records", "rows": rows, "growth": g,
              "plots": [Path(p).name for p in plots]}
    _timing.write_json(out, result)
    print(_timing.markdown_table(rows, COLUMNS))
    print()
    print(_timing.markdown_table(g, list(g[0]) if g else ["provider"]))
    return result


if __name__ == "__main__":
    main()
