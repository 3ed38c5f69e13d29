#!/usr/bin/env python3
"""Draws PNG plots from result JSONs (docs/json_schema.md, docs/kernel_bench.md).

    tools/plot_results.py --out DIR FILE.json [FILE.json ...]

Training records (schema cifar-speedrun/v1, from speedrun or the PyTorch reference
tools/reference/resnet9_torch.py, also that script's earlier records without a schema) give:
  accuracy_vs_time.png  test accuracy (TTA) against timed seconds, one point per run, one colour
                        per file, the mean of each file as a cross, the 94% target as a line;
  epoch_curves.png      per-epoch test accuracy (with --eval-every-epoch) or else training
                        accuracy, one line per run.
kernel_bench records (schema cifar-speedrun/kernel_bench/v1) give:
  conv_tflops.png       per conv shape and pass: the autotuned path and every cuDNN candidate
                        (and any other conv variant in the file), TFLOP/s;
  memory_kernels.png    every other kernel with a byte count (BN + CELU, whitening, head, ...):
                        its time in us, one bar per kernel_bench file given (e.g. two sessions'
                        on the same GPU), with its share of the GPU's memory bandwidth.
conv_bench records (schema cifar-speedrun/conv_bench/v2, docs/conv_kernels.md) give:
  igemm_vs_cudnn.png    per layer and pass: cuDNN's autotuned algorithm against the fastest
                        passing implicit-GEMM config (and, in the forward panel, the fused
                        conv + max-pool forward of the pooled layers), TFLOP/s, with the
                        speed-up over cuDNN written above each igemm bar;
  fused_epilogue_cost.png  per layer, what each fused epilogue adds to the same tile's launch
                        without it (statistics over the plain forward, pooled statistics over the
                        pool alone, BN-backward sums over the plain input gradient), in us, for
                        the tile whose fused launch is fastest, one bar per file: all the
                        conv_bench files given, e.g. two sessions' on the same GPU.
Needs matplotlib (Debian: python3-matplotlib). Only reads the files; numbers are plotted as
the tools wrote them.
"""
import argparse
import json
import os
import statistics
import sys

TRAIN_SCHEMA = "cifar-speedrun/v1"
BENCH_SCHEMA = "cifar-speedrun/kernel_bench/v1"
CONV_SCHEMA = "cifar-speedrun/conv_bench/v2"


def from_legacy_torch(rec):
    """The PyTorch reference's records written before schema v1 (no `schema` key, `device` an
    object, -1 for "not measured"; docs/results/2026-11-26-h100-torch-reference)."""
    out = dict(rec)
    dev = rec.get("device") or {}
    out["machine"] = {"gpu": dev.get("name") if dev.get("kind") == "cuda" else None}
    out["device"] = dev.get("kind", "?")
    out["runs"] = [dict(r, epochs=[dict(e, test_acc_tta=None if e.get("test_acc_tta", -1) < 0
                                        else e["test_acc_tta"]) for e in r.get("epochs", [])])
                   for r in rec.get("runs", [])]
    return out


def label_of(path, rec):
    # The folder is part of the name: one session's calls write files of the same name.
    gpu = (rec.get("machine") or {}).get("gpu") or rec.get("device_name") or rec.get("device", "?")
    name = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
    config = rec.get("config") or {}
    conv = config.get("conv_kernels")
    # The fused-epilogue options that are on (speedrun's config.fused_*), so variants differ.
    fused = "+".join(k[len("fused_"):] for k in ("fused_pool", "fused_stats", "fused_bn_grad") if config.get(k))
    if fused and config.get("fused_auto"):
        fused += " where faster"  # --fusions auto
    extra = (", conv " + conv if conv else "") + (", fused " + fused if fused else "")
    return f"{rec.get('tool', '?')} ({gpu}{extra}) {name}"


def counted_runs(rec):
    return [r for r in rec.get("runs", []) if not r.get("warmup") and not r.get("diverged")]


def plot_accuracy_vs_time(records, out, plt):
    fig, ax = plt.subplots(figsize=(8, 5))
    for path, rec in records:
        runs = [r for r in counted_runs(rec) if r.get("test_acc_tta") is not None]
        if not runs:
            continue
        xs = [r["timed_total_seconds"] for r in runs]
        ys = [100.0 * r["test_acc_tta"] for r in runs]
        pts = ax.scatter(xs, ys, s=18, alpha=0.7, label=label_of(path, rec))
        ax.scatter([statistics.mean(xs)], [statistics.mean(ys)], marker="x", s=120,
                   color=pts.get_facecolor()[0], linewidths=2.5)
    ax.axhline(94.0, color="gray", linestyle="--", linewidth=1, label="94% target")
    ax.set_xlabel("timed seconds per run (whitening + training + TTA evaluation)")
    ax.set_ylabel("test accuracy with TTA (%)")
    ax.set_title("accuracy against time, one point per run (x: mean)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy_vs_time.png"), dpi=120)
    plt.close(fig)


def plot_epoch_curves(records, out, plt):
    fig, ax = plt.subplots(figsize=(8, 5))
    what = "training accuracy"
    for i, (path, rec) in enumerate(records):
        color = f"C{i % 10}"
        for j, run in enumerate(counted_runs(rec)):
            epochs = run.get("epochs", [])
            test = [e.get("test_acc_tta") for e in epochs]
            if epochs and all(t is not None for t in test):
                ys, what = test, "test accuracy (TTA, per epoch)"
            else:
                ys = [e.get("train_acc") for e in epochs]
            xs = [e["epoch"] for e in epochs]
            pairs = [(x, 100.0 * y) for x, y in zip(xs, ys) if y is not None]
            if pairs:
                ax.plot(*zip(*pairs), color=color, alpha=0.5,
                        label=label_of(path, rec) if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{what} (%)")
    ax.set_title("per-epoch accuracy, one line per run")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "epoch_curves.png"), dpi=120)
    plt.close(fig)


def plot_conv_bench(path, rec, out, plt):
    conv = [r for r in rec.get("results", []) if r.get("family") == "conv" and r.get("tflops")]
    if not conv:
        return
    shapes = list(dict.fromkeys(r["shape"] for r in conv))
    passes = ["fwd", "bwd_data", "bwd_filter"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    for ax, p in zip(axes, passes):
        rows = [r for r in conv if r["name"].split()[0] == p]
        variants = list(dict.fromkeys(" ".join(r["name"].split()[1:]) for r in rows))
        width = 0.8 / max(1, len(variants))
        for k, v in enumerate(variants):
            ys = []
            for s in shapes:
                hit = [r["tflops"] for r in rows if r["shape"] == s and r["name"] == f"{p} {v}"]
                ys.append(hit[0] if hit else 0.0)
            ax.bar([i + k * width for i in range(len(shapes))], ys, width=width, label=v)
        ax.set_title(p)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
        ax.set_xticklabels(shapes, rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("TFLOP/s")
    gpu = (rec.get("gpu") or {}).get("name", "?")
    fig.suptitle(f"convolutions at batch 512 on {gpu} ({os.path.basename(path)})")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "conv_tflops.png"), dpi=120)
    plt.close(fig)


def file_label(path, rec):
    """A bench file's legend entry: its last three folders (one session's calls write files of the
    same names), its GPU and commit."""
    name = "/".join(os.path.abspath(path).split(os.sep)[-4:-1])
    return f"{name} ({(rec.get('gpu') or {}).get('name', '?')}, {rec.get('git_commit', '?')[:7]})"


def plot_memory_kernels(benches, out, plt):
    """memory_kernels.png: the kernel_bench rows outside the conv family that count their bytes,
    passing their checks, as horizontal bars of time (us) per row name, one colour per file."""
    per_file = []
    for path, rec in benches:
        rows = {r["name"]: r for r in rec.get("results", [])
                if r.get("family") != "conv" and r.get("bytes") and r.get("median_us", -1) > 0
                and (r.get("check") or {}).get("status", "pass") == "pass"}
        per_file.append((path, rec, rows))
    names = list(dict.fromkeys(n for _, _, rows in per_file for n in rows))
    if not names:
        return
    height = 0.8 / len(per_file)
    fig, ax = plt.subplots(figsize=(11, max(4.0, 0.22 * len(names) * len(per_file) + 1.5)))
    for k, (path, rec, rows) in enumerate(per_file):
        ys, xs, notes = [], [], []
        for i, name in enumerate(names):
            if name in rows:
                ys.append(i + k * height)
                xs.append(rows[name]["median_us"])
                notes.append(f"{rows[name]['pct_peak']:.0f}%" if "pct_peak" in rows[name] else "")
        bars = ax.barh(ys, xs, height=height, color=f"C{k}", label=file_label(path, rec))
        for bar, note in zip(bars, notes):
            ax.annotate(note, (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center", fontsize=5,
                        xytext=(2, 0), textcoords="offset points")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))])
    ax.set_yticklabels(names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")  # from a few us (the head) to ms (the once-per-run whitening statistics)
    ax.set_xlabel("median time per call (us, log scale); beside each bar its share of the memory bandwidth")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("memory-bound kernels (kernel_bench)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "memory_kernels.png"), dpi=120)
    plt.close(fig)


def plot_igemm_vs_cudnn(path, rec, out, plt):
    results = [r for r in rec.get("results", []) if r.get("median_us", -1) > 0]
    layers = list(dict.fromkeys(r["layer"] for r in results))
    if not layers:
        return

    def fastest(layer, p, kernel, epilogue):  # kernel: one name or a tuple of names
        kernels = kernel if isinstance(kernel, tuple) else (kernel,)
        rows = [r for r in results if r["layer"] == layer and r["pass"] == p and r["kernel"] in kernels
                and r.get("epilogue", "none") == epilogue and r["check"]["status"] == "pass"]
        return min(rows, key=lambda r: r["median_us"]) if rows else None

    fig, axes = plt.subplots(1, 3, figsize=(16, 5), sharey=True)
    for ax, p in zip(axes, ["fwd", "bwd_data", "bwd_filter"]):
        series = [("cuDNN", "cudnn", "none"), ("igemm (mma.sync)", "igemm", "none")]
        if any(r["kernel"] == "wgmma" for r in results):
            series.append(("wgmma (Hopper)", "wgmma", "none"))
        if p == "fwd":
            series.append(("igemm conv+pool (fused)", "igemm", "pool"))
        if p == "bwd_data" and any(r.get("epilogue") == "bn_sums" for r in results):
            series.append(("ours + BN-backward sums (fused)", ("igemm", "wgmma"), "bn_sums"))
        width = 0.8 / len(series)
        for k, (label, kernel, epilogue) in enumerate(series):
            xs, ys, notes = [], [], []
            for i, layer in enumerate(layers):
                r = fastest(layer, p, kernel, epilogue)
                if r is None:
                    continue
                xs.append(i + k * width)
                ys.append(r["tflops"])
                notes.append(f"{r['speedup_vs_cudnn']:.2f}x" if kernel != "cudnn" and "speedup_vs_cudnn" in r
                             else "")
            if not xs:  # e.g. no wgmma rows (not a Hopper GPU): no legend entry either
                continue
            bars = ax.bar(xs, ys, width=width, label=label, color=f"C{k}")
            for bar, note in zip(bars, notes):
                if note:
                    ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=6)
        ax.set_title(p)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))])
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("TFLOP/s (2*N*H*W*K*R*R*C per pass)")
    gpu = (rec.get("gpu") or {}).get("name", "?")
    fig.suptitle(f"hand-written implicit GEMM vs cuDNN at batch 512 on {gpu} ({os.path.basename(path)})")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "igemm_vs_cudnn.png"), dpi=120)
    plt.close(fig)


def fused_costs(rec):
    """{(epilogue, layer): (extra_us, config)}: for each fused epilogue and layer, the passing fused
    row of ours with the lowest time, minus the time of the same kernel and config without it."""
    rows = [r for r in rec.get("results", []) if r.get("median_us", -1) > 0 and r["kernel"] != "cudnn"
            and r["check"]["status"] == "pass"]
    by_key = {(r["layer"], r["pass"], r["kernel"], r["config"], r.get("epilogue", "none")): r for r in rows}
    out = {}
    # (fused epilogue, its pass, the epilogue it is compared with)
    for epi, p, base in (("stats", "fwd", "none"), ("pool+stats", "fwd", "pool"), ("bn_sums", "bwd_data", "none")):
        for r in rows:
            if r["pass"] != p or r.get("epilogue", "none") != epi:
                continue
            b = by_key.get((r["layer"], p, r["kernel"], r["config"], base))
            if b is None:
                continue
            key = (epi, r["layer"])
            if key not in out or r["median_us"] < out[key][2]:
                out[key] = (r["median_us"] - b["median_us"], r["config"], r["median_us"])
    return {k: v[:2] for k, v in out.items()}


def plot_fused_cost(convs, out, plt):
    costs = [(path, rec, fused_costs(rec)) for path, rec in convs]
    if not any(c for _, _, c in costs):
        return
    panels = [("stats", "statistics (over the plain forward)"), ("pool+stats", "pooled statistics (over pool)"),
              ("bn_sums", "BN-backward sums (over the plain input gradient)")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, (epi, title) in zip(axes, panels):
        layers = list(dict.fromkeys(layer for _, _, c in costs for (e, layer) in c if e == epi))
        width = 0.8 / len(costs)
        for k, (path, rec, c) in enumerate(costs):
            xs, ys, notes = [], [], []
            for i, layer in enumerate(layers):
                if (epi, layer) in c:
                    xs.append(i + k * width)
                    ys.append(c[(epi, layer)][0])
                    notes.append(c[(epi, layer)][1])
            bars = ax.bar(xs, ys, width=width, label=file_label(path, rec), color=f"C{k}")
            for bar, note in zip(bars, notes):
                ax.annotate(note.replace("wgmma_", ""), (bar.get_x() + bar.get_width() / 2, max(bar.get_height(), 0)),
                            ha="center", va="bottom", fontsize=5, rotation=90)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))])
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0), hi * 1.4)  # room for the config names above the bars
        ax.axhline(0, color="black", linewidth=0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("us added by the fused epilogue (same tile)")
    fig.suptitle("what the fused epilogues cost: the fastest fused launch minus the same tile without the epilogue")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fused_epilogue_cost.png"), dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the PNG files (created)")
    ap.add_argument("files", nargs="+", help="result JSON files")
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_results: matplotlib is missing (Debian: apt-get install python3-matplotlib)")
    train, bench, conv = [], [], []
    for path in args.files:
        try:
            with open(path) as f:
                rec = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"plot_results: {path}: cannot read JSON: {e}")
        schema = rec.get("schema")
        if schema is None and rec.get("tool") == "resnet9_torch":
            rec = from_legacy_torch(rec)
            schema = TRAIN_SCHEMA
        if schema == TRAIN_SCHEMA:
            train.append((path, rec))
        elif schema == BENCH_SCHEMA:
            bench.append((path, rec))
        elif schema == CONV_SCHEMA:
            conv.append((path, rec))
        else:
            sys.exit(f"plot_results: {path}: unknown schema {schema!r} "
                     f"(expected {TRAIN_SCHEMA}, {BENCH_SCHEMA} or {CONV_SCHEMA})")
    os.makedirs(args.out, exist_ok=True)
    if train:
        plot_accuracy_vs_time(train, args.out, plt)
        plot_epoch_curves(train, args.out, plt)
    for path, rec in bench:
        plot_conv_bench(path, rec, args.out, plt)
    if bench:
        plot_memory_kernels(bench, args.out, plt)
    for path, rec in conv:
        plot_igemm_vs_cudnn(path, rec, args.out, plt)
    if conv:
        plot_fused_cost(conv, args.out, plt)
    print(f"plot_results: wrote PNGs to {args.out}")


if __name__ == "__main__":
    main()
