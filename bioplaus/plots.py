"""Pictures: the learning curves of a run, a comparison of runs, a benchmark table.

Every picture is drawn from the files a run or a benchmark leaves behind (``metrics.jsonl``,
``summary.json``, ``config.yaml``, the benchmark's JSON), so it works for any learner and can be
redrawn later. matplotlib is imported inside the drawing functions only, with the non-interactive
Agg backend, so ``import bioplaus`` loads no matplotlib and no display is needed.

* `draw_curves(run_dir)` → ``RUN_DIR/curves.png``: the training loss and the monitored validation
  metric per epoch, one line per readout where a rule has several (e.g. ``val_accuracy_softmax``
  and ``val_accuracy_goodness``). The engine calls `write_run_figures` when a run ends (and again
  when a resumed run ends), which also calls the learner's `Learner.write_figures` hook.
* `draw_comparison(run_dirs, path)` (``bioplaus compare RUN... --plot FILE``): the runs'
  validation curves overlaid, and their test metric as bars; runs whose configurations differ only
  in the seed share a bar, drawn as the mean with the spread (one standard deviation) over seeds.
* `draw_bench(payload, path)` (``bioplaus bench`` writes ``OUT/NAME.png`` beside ``NAME.md``):
  test accuracy (mean ± std over seeds) and training throughput of every row.

The config key ``plots`` (default true) turns run and benchmark pictures on or off. A picture that
fails to draw is logged and does not fail the run, unless the environment variable
``BIOPLAUS_STRICT_PLOTS=1`` is set (the test suite sets it, so drawing bugs surface there).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: pixels per inch of every picture
DPI = 100
#: (width, height) in inches of ``curves.png`` and of a comparison
CURVES_SIZE = (11.0, 4.0)
COMPARE_SIZE = (12.0, 4.5)
#: file endings `draw_comparison` accepts (matplotlib picks the format from the ending)
FORMATS = (".png", ".pdf", ".svg")
#: config keys that do not make two runs different configurations (`same_configuration`)
NOT_CONFIGURATION = ("seed", "paths", "trainer.resume", "trainer.progress", "logger", "plots")


def bench_size(rows: int) -> tuple[float, float]:
    """(width, height) in inches of a benchmark picture of ``rows`` rows."""
    return 12.0, max(3.0, 1.2 + 0.38 * rows)


def pixel_size(size: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a picture of ``size`` inches, as saved (no tight cropping)."""
    return round(size[0] * DPI), round(size[1] * DPI)


# -- figures ------------------------------------------------------------------------------------


def new_figure(size: tuple[float, float], columns: int = 1) -> tuple[Any, list[Any]]:
    """A matplotlib (figure, axes list) of ``size`` inches and ``columns`` panels side by side,
    drawn with the Agg backend. For `Learner.write_figures` too; save it with `save_figure`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, columns, squeeze=False)[0]
    return fig, list(axes)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (format from its ending) at `DPI`, creating the folder; the file
    is replaced atomically, so a reader never sees half a picture."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part{path.suffix}")
    fig.savefig(tmp, dpi=DPI)
    os.replace(tmp, path)
    return path


# -- reading runs -------------------------------------------------------------------------------


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of ``RUN_DIR/metrics.jsonl`` in epoch order (empty if none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted((r for r in records if "epoch" in r), key=lambda r: r["epoch"])


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``key``, skipping epochs where it is missing or null (non-finite)."""
    points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def _keys(records: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records:
        seen.update(dict.fromkeys(r))
    return list(seen)


def readout_keys(records: list[dict[str, Any]], monitor: str, split: str = "val") -> list[str]:
    """The ``SPLIT_MONITOR`` keys to draw: one per named readout (``val_accuracy_softmax``, …)
    where the rule reports several, else the headline ``val_accuracy`` alone."""
    head = f"{split}_{monitor}"
    named = [k for k in _keys(records) if k.startswith(head + "_")]
    return named or ([head] if head in _keys(records) else [])


def loss_keys(records: list[dict[str, Any]], loss: str | None = "loss") -> list[str]:
    """Training metrics for the loss panel: ``train_<loss>`` first, then the other training
    metrics named like a loss (per-layer or per-term losses). A rule without a loss (``loss``
    None) shows its training metrics but the seconds and accuracies."""
    keys = [k for k in _keys(records) if k.startswith("train_") and k != "train_seconds"]
    if loss is not None and f"train_{loss}" in keys:
        others = [k for k in keys if "loss" in k and k != f"train_{loss}"]
        return [f"train_{loss}", *others]
    lossy = [k for k in keys if "loss" in k]
    return lossy or [k for k in keys if "accuracy" not in k]


def configuration(run_dir: str | Path) -> str:
    """A key equal for runs whose configuration differs only in the seed (and in where or how
    they logged): ``config.yaml`` without `NOT_CONFIGURATION`, else the summary's learner,
    circuit, data and size."""
    path = Path(run_dir) / "config.yaml"
    if path.is_file():
        import yaml

        cfg = yaml.safe_load(path.read_text()) or {}
        for dotted in NOT_CONFIGURATION:
            *parents, leaf = dotted.split(".")
            node = cfg
            for p in parents:
                node = node.get(p, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(leaf, None)
        return json.dumps(cfg, sort_keys=True, default=str)
    summary = read_summary(run_dir)
    return json.dumps([summary.get(k) for k in ("learner", "circuit", "data", "parameters",
                                                 "train_examples", "input_shape")])


# -- one run --------------------------------------------------------------------------------------


def _pretty(key: str) -> str:
    return key.removeprefix("train_").removeprefix("val_").replace("_", " ")


def draw_curves(run_dir: str | Path, monitor: str | None = None, loss: str | None = "loss",
                mode: str | None = None) -> Path | None:
    """Draw ``RUN_DIR/curves.png`` from its ``metrics.jsonl``: the training loss per epoch (left)
    and the monitored validation metric per epoch, one line per readout (right), with the best
    epoch marked. ``monitor`` defaults to the summary's ``monitor`` (else ``accuracy``).

    Returns the file written, or None when no epoch has been recorded yet. Size: `CURVES_SIZE`
    at `DPI`.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return None
    summary = read_summary(run_dir)
    monitor = monitor or summary.get("monitor") or "accuracy"
    fig, (ax_loss, ax_val) = new_figure(CURVES_SIZE, columns=2)
    title = " / ".join(str(summary[k]) for k in ("learner", "circuit", "data") if summary.get(k))
    fig.suptitle(f"{title or run_dir.name} — {summary.get('status', 'running')}", fontsize=11)

    losses = loss_keys(records, loss)
    for i, key in enumerate(losses):
        epochs, values = _series(records, key)
        ax_loss.plot(epochs, values, marker="o", markersize=3, label=_pretty(key),
                     linewidth=2.0 if i == 0 else 1.0, alpha=1.0 if i == 0 else 0.7)
    positive = [v for k in losses for v in _series(records, k)[1]]
    if positive and min(positive) > 0 and max(positive) / min(positive) > 30:
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="training loss" if any("loss" in k for k in losses)
                else "training metric", title="training")
    if losses:
        ax_loss.legend(fontsize=8)

    for key in readout_keys(records, monitor):
        epochs, values = _series(records, key)
        ax_val.plot(epochs, values, marker="o", markersize=3, label=f"val {_pretty(key)}")
    train_key = f"train_{monitor}"
    if train_key in _keys(records):
        epochs, values = _series(records, train_key)
        ax_val.plot(epochs, values, linestyle="--", color="grey", label=f"train {_pretty(train_key)}")
    best = summary.get("best_epoch")
    if isinstance(best, int):
        ax_val.axvline(best, color="black", linestyle=":", linewidth=1, label=f"best epoch {best}")
    better = {"max": " (higher is better)", "min": " (lower is better)"}.get(mode or "", "")
    ax_val.set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor}{better}")
    ax_val.legend(fontsize=8)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save_figure(fig, run_dir / "curves.png")


def attempt(what: str, draw: Callable[[], Any], log: Callable[[str], None]) -> None:
    """Run ``draw``; if it fails, ``log`` the error and go on (a picture never fails a run or a
    benchmark). With ``BIOPLAUS_STRICT_PLOTS=1`` in the environment the error is raised instead."""
    try:
        draw()
    except Exception as e:
        if os.environ.get("BIOPLAUS_STRICT_PLOTS") == "1":
            raise
        log(f"could not draw {what}: {type(e).__name__}: {e}")


def write_run_figures(run_dir: str | Path, learner: Any, monitor: str, mode: str,
                      log: Callable[[str], None], data: Any = None) -> None:
    """What the engine draws when a run ends: ``curves.png``, then the learner's own pictures
    (`Learner.write_figures`, given the run's data), each through `attempt`."""
    attempt("curves.png", lambda: draw_curves(run_dir, monitor, learner.loss_metric, mode), log)
    attempt(f"the {learner.name} figures", lambda: learner.write_figures(Path(run_dir), data), log)


# -- several runs ---------------------------------------------------------------------------------


def _labels(groups: list[list[Path]], summaries: dict[Path, dict[str, Any]]) -> list[str]:
    """A short distinct label per group: the learner, then circuit and data, then the folder."""
    def describe(group: list[Path], keys: Sequence[str]) -> str:
        s = summaries[group[0]]
        return " / ".join(str(s.get(k, "?")) for k in keys)

    for keys in (("learner",), ("learner", "circuit"), ("learner", "circuit", "data")):
        labels = [describe(g, keys) for g in groups]
        if len(set(labels)) == len(labels):
            return labels
    return [g[0].name for g in groups]


def draw_comparison(run_dirs: Sequence[str | Path], path: str | Path) -> Path:
    """Draw several runs into ``path``: their validation curves of the monitored metric overlaid
    (left), and their test metric as bars (right). Runs whose configurations differ only in the
    seed (`configuration`) share a colour and a bar: the mean, with one standard deviation over
    seeds as the error bar and every seed's value as a dot.

    Raises `UsageError` for a file ending other than `FORMATS`. Size: `COMPARE_SIZE` at `DPI`.
    """
    from bioplaus.errors import UsageError

    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--plot {path}: the picture's file must end in {', '.join(FORMATS)}.")
    dirs = [Path(d) for d in run_dirs]
    summaries = {d: read_summary(d) for d in dirs}
    groups: dict[str, list[Path]] = {}
    for d in dirs:
        groups.setdefault(configuration(d), []).append(d)
    grouped = list(groups.values())
    labels = _labels(grouped, summaries)
    monitors = {summaries[d].get("monitor") or "accuracy" for d in dirs}
    shared = monitors.pop() if len(monitors) == 1 else None

    fig, (ax_val, ax_test) = new_figure(COMPARE_SIZE, columns=2)
    data = sorted({str(s.get("data")) for s in summaries.values() if s.get("data")})
    fig.suptitle(f"{len(dirs)} runs" + (f" on {', '.join(data)}" if data else ""), fontsize=11)
    colours = [f"C{i % 10}" for i in range(len(grouped))]
    for group, label, colour in zip(grouped, labels, colours, strict=True):
        for i, d in enumerate(group):
            monitor = summaries[d].get("monitor") or "accuracy"
            epochs, values = _series(read_metrics(d), f"val_{monitor}")
            seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
            ax_val.plot(epochs, values, color=colour, marker="o", markersize=2, linewidth=1.2,
                        alpha=0.85, label=label + seeds if i == 0 else None)
    ax_val.set(xlabel="epoch", ylabel=f"validation {shared or 'monitored metric'}",
               title=f"validation {shared or 'monitored metric'} per epoch")
    ax_val.grid(alpha=0.3)
    ax_val.xaxis.get_major_locator().set_params(integer=True)
    ax_val.legend(fontsize=8)

    means, spreads, dots = [], [], []
    for group in grouped:
        values = []
        for d in group:
            s = summaries[d]
            value = s.get(f"test_{s.get('monitor') or 'accuracy'}")
            if isinstance(value, (int, float)) and math.isfinite(value):
                values.append(float(value))
        means.append(statistics.mean(values) if values else math.nan)
        spreads.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        dots.append(values)
    positions = list(range(len(grouped)))
    ax_test.bar(positions, [0.0 if math.isnan(m) else m for m in means], yerr=spreads, capsize=4,
                color=colours, alpha=0.75)
    for x, values, mean in zip(positions, dots, means, strict=True):
        ax_test.scatter([x] * len(values), values, color="black", s=10, zorder=3)
        text = "no test" if math.isnan(mean) else f"{mean:.4g}"
        ax_test.annotate(text, (x, 0 if math.isnan(mean) else mean), textcoords="offset points",
                         xytext=(0, 4), ha="center", fontsize=8)
    finite = [v for values in dots for v in values]
    if finite and shared in (None, "accuracy") and min(finite) > 0.5:
        # accuracies close together: start the axis near them so differences show
        ax_test.set_ylim(max(0.0, min(finite) - 0.1), min(1.0, max(finite) + 0.03))
    ax_test.set_xticks(positions, labels, rotation=20 if len(grouped) > 3 else 0, ha="right"
                       if len(grouped) > 3 else "center", fontsize=8)
    ax_test.set(ylabel=f"test {shared or 'monitored metric'}",
                title=f"test {shared or 'monitored metric'} (mean ± std over seeds)")
    ax_test.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


# -- a benchmark table ----------------------------------------------------------------------------


def draw_bench(payload: dict[str, Any], path: str | Path) -> Path:
    """Draw a `bioplaus bench` results payload into ``path``: one horizontal bar per row, the
    test accuracy (%, mean ± std over seeds, every seed a dot; left) and the training throughput
    (samples/s, log scale; right). Size: `bench_size` of the row count at `DPI`."""
    rows = list(payload.get("rows", []))
    fig, (ax_acc, ax_speed) = new_figure(bench_size(len(rows)), columns=2)
    fig.suptitle(str(payload.get("title", "benchmark")), fontsize=11)
    names = [str(r.get("experiment", "?")) + (" *" if r.get("from") else "") for r in rows]
    positions = list(range(len(rows)))[::-1]  # the first row on top, as in the table
    acc = [100 * float(r.get("test_accuracy_mean", math.nan)) for r in rows]
    std = [100 * float(r.get("test_accuracy_std", 0.0)) for r in rows]
    colours = [f"C{i % 10}" for i in range(len(rows))]
    ax_acc.barh(positions, acc, xerr=std, capsize=3, color=colours, alpha=0.75)
    for y, row, value, spread in zip(positions, rows, acc, std, strict=True):
        seeds = [100 * float(v) for v in row.get("test_accuracies", [])]
        ax_acc.scatter(seeds, [y] * len(seeds), color="black", s=8, zorder=3)
        text = f"{value:.2f}" + (f" ± {spread:.2f}" if len(seeds) > 1 else "")
        ax_acc.annotate(text, (max([value + spread, *seeds]), y), textcoords="offset points",
                        xytext=(5, -3), fontsize=7)
    finite = [a for a in acc if math.isfinite(a)]
    if finite and min(finite) > 50:
        ax_acc.set_xlim(min(finite) - 5, min(100.0, max(finite) + 3))
    ax_acc.set_yticks(positions, names, fontsize=8)
    ax_acc.set(xlabel="test accuracy (%)", title="test accuracy (mean ± std over seeds)")
    speed = [float(r.get("samples_per_second_mean") or math.nan) for r in rows]
    ax_speed.barh(positions, speed, color=colours, alpha=0.75)
    for y, row, value in zip(positions, rows, speed, strict=True):
        if math.isfinite(value):
            device = str(row.get("device", "")).split(":")[0]
            ax_speed.annotate(f"{value:,.0f} ({device})", (value, y), textcoords="offset points",
                              xytext=(4, -3), fontsize=7)
    if any(math.isfinite(s) and s > 0 for s in speed):
        from matplotlib.ticker import NullFormatter

        ax_speed.set_xscale("log")
        ax_speed.xaxis.set_minor_formatter(NullFormatter())
        top = max(s for s in speed if math.isfinite(s))
        ax_speed.set_xlim(right=top * 6)  # room for the labels
    ax_speed.set_yticks(positions, [""] * len(rows))
    ax_speed.set(xlabel="training samples/s (log scale)", title="training throughput (device)")
    for ax in (ax_acc, ax_speed):
        ax.grid(alpha=0.3, axis="x")
    if any(r.get("from") for r in rows):
        fig.text(0.01, 0.01, "* row copied from another results file", fontsize=7)
    return save_figure(fig, path)


def enabled(overrides: Sequence[str]) -> bool:
    """The ``plots`` key (default true) after these command-line overrides: for commands that
    take overrides for several configurations (``bioplaus bench``). Only the ``plots=`` overrides
    are composed, so keys valid for a preset's circuit alone do not matter here."""
    from bioplaus.config import compose

    mine = [o for o in overrides if o.split("=", 1)[0] in ("plots", "++plots")]
    return bool(compose(mine, check=False).get("plots", True)) if mine else True
