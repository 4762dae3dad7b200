"""``bioplaus export brian2``: a trained `snn` run as a Brian2 network, and a spike-for-spike check.

    bioplaus export brian2 RUN_DIR [--out FILE] [--check N]

writes ``FILE`` (default ``RUN_DIR/brian2_net.py``), a Python file that needs only numpy and
brian2, and beside it ``FILE`` with suffix ``.npz``: per layer the weights with BatchNorm folded
in, the integer delays, the constant currents and the number of steps the layer exists, plus the
neuron constants and the run's first test examples. The Brian2 side is ``bioplaus/brian2_net.py``
(copied verbatim; its docstring gives the equations and the schedule).

BatchNorm in evaluation mode, per channel i, folded into the synapse before it:

    γ_i (Σ_j w_ij S_j[t − d_ij] − μ_i)/√(σ²_i + ε) + β_i = Σ_j (s_i w_ij) S_j[t − d_ij] + b_i,
    s_i = γ_i/√(σ²_i + ε),   b_i = β_i − s_i μ_i          (b_i added at every step)

Delays are the rounded tap positions the model evaluates with (``DelaySynapse.delays``).

``--check N`` runs the first N test examples through both simulators, the PyTorch model in
float64 with integer delays (what `dcls` evaluates) and the exported Brian2 file, and compares
every hidden spike (example × neuron × step, each layer over the steps it exists), the
predictions and the readout membranes U[t]. It passes when at least ``SPIKE_TOLERANCE`` of the
spikes and ``PREDICTION_TOLERANCE`` of the predictions are identical; otherwise the command exits 1.

Errors (exit 2, nothing written): a missing run folder, a run that is not finished or not of the
`snn` circuit, inputs that are not spike counts, brian2 not installed (``pip install 'bioplaus[export]'``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bioplaus.errors import UsageError, require_package

SPIKE_TOLERANCE = 0.999  # fraction of identical spikes the check demands
PREDICTION_TOLERANCE = 0.99  # fraction of identical predictions the check demands
STORED_EXAMPLES = 100  # test examples saved in the .npz for the exported script's own run
TEMPLATE = Path(__file__).with_name("brian2_net.py")


def require_brian2() -> ModuleType:
    """The brian2 module, or a UsageError saying how to install it."""
    return require_package("brian2", "export brian2", "export")


# -- the network as arrays -----------------------------------------------------------------------


def fold_batchnorm(norm: Any) -> tuple[np.ndarray, np.ndarray]:
    """(scale s, constant current b) of an eval-mode ``BatchNorm1d`` (float64): y = s·x + b."""
    mean = norm.running_mean.detach().double().cpu().numpy()
    var = norm.running_var.detach().double().cpu().numpy()
    gamma = np.ones_like(mean) if norm.weight is None else norm.weight.detach().double().cpu().numpy()
    beta = np.zeros_like(mean) if norm.bias is None else norm.bias.detach().double().cpu().numpy()
    scale = gamma / np.sqrt(var + float(norm.eps))
    return scale, beta - scale * mean


def network_params(circuit: Any) -> dict[str, np.ndarray]:
    """The arrays of the exported ``.npz`` for an `snn` circuit with its output layer (see
    `bioplaus.brian2_net.load_params`)."""
    if not getattr(circuit, "has_head", False):
        raise UsageError("export brian2 needs an 'snn' circuit with its output layer.")
    params: dict[str, np.ndarray] = {}
    lengths, steps = [], int(circuit.steps)
    for l, block in enumerate(circuit.blocks):
        syn = block.synapse
        w = syn.weight.detach().double().cpu().numpy().copy()
        d = syn.delays().cpu().numpy() if syn.has_delays else np.zeros(w.shape, dtype=np.int64)
        b = np.zeros(w.shape[0])
        norm = getattr(block, "norm", None)
        if norm is not None:
            scale, b = fold_batchnorm(norm)
            w = w * scale[:, None]
        steps += syn.extra_steps
        lengths.append(steps)
        params[f"w{l}"], params[f"d{l}"], params[f"b{l}"] = w, d.astype(np.int64), b
    tau = {float(b.neuron.tau) for b in circuit.blocks[:-1]} | {float(circuit.blocks[-1].tau)}
    if len(tau) != 1:
        raise UsageError(f"export brian2 expects one τ for every layer; got {sorted(tau)}.")
    params["lengths"] = np.asarray(lengths, dtype=np.int64)
    params["tau"] = np.asarray(tau.pop())
    params["steps"] = np.asarray(int(circuit.steps))
    params["threshold_op"] = np.asarray(">=" if circuit.options.neurons == "spikingjelly" else ">")
    return params


def torch_reference(circuit: Any, x: Any) -> dict[str, np.ndarray]:
    """The PyTorch model on ``x`` (batch, T, C) in float64 with integer delays, in eval mode:
    ``spikes`` (batch, T_l, n_l) per hidden layer, ``membranes`` (batch, T', C), ``predictions``."""
    import copy

    import torch

    net = copy.deepcopy(circuit).double().eval().cpu()
    with torch.no_grad():
        outs = net.layer_outputs(torch.as_tensor(np.asarray(x), dtype=torch.float64), quantised=True)
    spikes = [o.transpose(0, 1).numpy() for o in outs[:-1]]
    u = outs[-1].transpose(0, 1).numpy()
    scores = torch.from_numpy(u).softmax(-1).sum(1).numpy()
    return {"spikes": spikes, "membranes": u, "predictions": scores.argmax(1)}


# -- the exported file ---------------------------------------------------------------------------


def write_export(params: dict[str, np.ndarray], out: Path, test_x: Any = None, test_y: Any = None,
                 source: str = "") -> Path:
    """Write ``out`` (the Brian2 script) and ``out.with_suffix('.npz')``; returns ``out``."""
    out = Path(out)
    if out.suffix != ".py":
        raise UsageError(f"--out must name a .py file; got {out}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(params)
    if test_x is not None:
        arrays["test_x"] = np.asarray(test_x)[:STORED_EXAMPLES]
        arrays["test_y"] = np.asarray(test_y)[:STORED_EXAMPLES]
    np.savez(out.with_suffix(".npz"), **arrays)
    text = TEMPLATE.read_text()
    if source:
        text = f"# Exported by `bioplaus export brian2` from {source}\n" + text
    out.write_text(text)
    return out


def load_export(path: Path) -> ModuleType:
    """Import an exported Brian2 script as a module (its own code, not bioplaus's copy)."""
    spec = importlib.util.spec_from_file_location(f"bioplaus_export_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the check -----------------------------------------------------------------------------------


def compare(reference: dict[str, Any], brian: dict[str, Any]) -> dict[str, float]:
    """Agreement of two simulations: fraction of identical hidden spikes (each layer over the
    steps it exists), of identical predictions, and the largest readout-membrane difference."""
    same = total = 0
    for ref, got in zip(reference["spikes"], brian["spikes"], strict=True):
        steps = ref.shape[1]
        same += int((ref == got[:, :steps]).sum())
        total += ref.size
        # a layer must stay silent after the steps it exists
        total += got[:, steps:].size
        same += int((got[:, steps:] == 0).sum())
    examples = len(reference["predictions"])
    return {
        "examples": examples,
        "spikes_compared": total,
        "identical_spikes": same / max(1, total),
        "identical_predictions": float((reference["predictions"] == brian["predictions"]).mean()),
        "max_membrane_difference": float(np.abs(reference["membranes"] - brian["membranes"]).max()),
        "torch_spikes": int(sum(s.sum() for s in reference["spikes"])),
        "brian2_spikes": int(sum(s.sum() for s in brian["spikes"])),
    }


def passes(report: dict[str, float]) -> bool:
    return (report["identical_spikes"] >= SPIKE_TOLERANCE
            and report["identical_predictions"] >= PREDICTION_TOLERANCE)


def format_report(report: dict[str, float]) -> str:
    verdict = "PASS" if passes(report) else "FAIL"
    return (f"check on {report['examples']} test examples ({report['spikes_compared']} spike slots; "
            f"{report['torch_spikes']} spikes in PyTorch, {report['brian2_spikes']} in Brian2):\n"
            f"  identical spikes       {100 * report['identical_spikes']:.4f} %  "
            f"(tolerance ≥ {100 * SPIKE_TOLERANCE:g} %)\n"
            f"  identical predictions  {100 * report['identical_predictions']:.2f} %  "
            f"(tolerance ≥ {100 * PREDICTION_TOLERANCE:g} %)\n"
            f"  largest |U_torch − U_brian2| of the readout membranes  "
            f"{report['max_membrane_difference']:.3g}\n"
            f"  {verdict}  ({report['seconds']:.1f} s in Brian2)")


def check(circuit: Any, script: Path, x: Any) -> dict[str, float]:
    """Run ``x`` through the PyTorch circuit (float64) and the exported ``script``; the report
    of `compare` plus ``seconds`` spent in Brian2."""
    module = load_export(script)
    params = module.load_params(Path(script).with_suffix(".npz"))
    reference = torch_reference(circuit, x)
    start = time.perf_counter()
    brian = module.simulate(params, np.asarray(x))
    report = compare(reference, brian)
    report["seconds"] = time.perf_counter() - start
    return report


# -- a finished run ------------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> tuple[Any, Any, Any]:
    """(config, data, circuit) of a finished `snn` run, on the CPU, with the weights it was tested
    with (``checkpoints/best.pt`` under ``trainer.select=best_val``, else ``checkpoints/last.pt``)."""
    import torch
    from omegaconf import OmegaConf

    from bioplaus.engine import build

    run = Path(run_dir)
    if not run.is_dir():
        raise UsageError(f"export: no run folder at {run}.")
    if not (run / "config.yaml").exists() or not (run / "summary.json").exists():
        raise UsageError(f"export: {run} is not a finished run (config.yaml and summary.json expected).")
    cfg = OmegaConf.load(run / "config.yaml")
    name = str(OmegaConf.select(cfg, "circuit.name", default=""))
    if name != "snn":
        raise UsageError(f"export brian2 handles runs of the 'snn' circuit; {run} used circuit '{name}'.")
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    select_best = str(OmegaConf.select(cfg, "trainer.select", default="last")) == "best_val"
    if select_best and best.exists():
        state = torch.load(best, map_location="cpu", weights_only=True)
    elif last.exists():
        state = torch.load(last, map_location="cpu", weights_only=False)["learner"]
    else:
        raise UsageError(f"export: {run} holds no checkpoints/last.pt (was trainer.checkpoint off?).")
    cfg.device = "cpu"
    data, circuit, learner = build(cfg)
    learner.load_state_dict(state)
    return cfg, data, circuit.eval()


def export_run(run_dir: str | Path, out: str | Path | None = None, check_examples: int = 0,
               stream: Any = None) -> tuple[Path, dict[str, float] | None]:
    """Export a finished `snn` run; with ``check_examples`` > 0 also run the check.
    Returns (script path, report or None)."""
    stream = stream or sys.stdout
    require_brian2()
    if check_examples < 0:
        raise UsageError(f"--check must be ≥ 0; got {check_examples}.")
    _, data, circuit = load_run(run_dir)
    script = Path(out) if out is not None else Path(run_dir) / "brian2_net.py"
    params = network_params(circuit)
    test_x, test_y = data.test_x.cpu().numpy(), data.test_y.cpu().numpy()
    if (test_x < 0).any() or (np.rint(test_x) != test_x).any():
        raise UsageError(f"export brian2 feeds the net spikes: the inputs of {run_dir} are not "
                         f"non-negative integer spike counts (e.g. normalised images; use a "
                         f"spiking data set with data.normalize=none).")
    write_export(params, script, test_x, test_y, source=str(Path(run_dir)))
    print(f"wrote {script} and {script.with_suffix('.npz')}", file=stream, flush=True)
    if not check_examples:
        return script, None
    report = check(circuit, script, test_x[:check_examples])
    print(format_report(report), file=stream, flush=True)
    return script, report


def main(args: list[str]) -> None:
    """CLI entry: ``export brian2 RUN_DIR [--out FILE] [--check N]``; exits 1 when the check fails."""
    parser = argparse.ArgumentParser(prog="bioplaus export", add_help=True)
    parser.add_argument("target", choices=["brian2"], help="simulator to export to")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--out", default=None, metavar="FILE", help="the .py to write")
    parser.add_argument("--check", type=int, default=0, metavar="N",
                        help="compare N test examples in PyTorch and Brian2")
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:
        if e.code == 0:  # --help
            raise
        raise UsageError("usage: bioplaus export brian2 RUN_DIR [--out FILE] [--check N]") from e
    _, report = export_run(ns.run_dir, ns.out, ns.check)
    if report is not None and not passes(report):
        sys.exit(1)
