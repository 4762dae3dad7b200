"""A spiking net exported by ``bioplaus export brian2``, simulated by Brian2 (needs only numpy and brian2).

This file is copied verbatim beside an ``.npz`` of the same name that holds the network; run it
as a script to simulate the test examples stored there:

    python NET.py [--examples N]

or import it and call ``simulate(load_params("NET.npz"), x)``.

The network, step by step (one Brian2 time step dt = 1 ms per time step of the trained model):

    H_l[t] = (1 − 1/τ) V_l[t−1] + b_l + Σ_j w_lij S_{l−1,j}[t − d_lij]      discrete leak, no ODE
    S_l[t] = H_l[t] ≥ 1   (``>`` for nets trained with snnTorch's kernel),  V_l[t] = H_l[t] (1 − S_l[t])
    U[t]   = (1 − 1/τ) U[t−1] + Σ_j w_ij S_{L,j}[t − d_ij]                   non-spiking readout

w and b are the trained weights with BatchNorm folded in, d integer delays (multiples of dt).
Hidden layer l only exists for its first ``lengths[l]`` steps (each delay layer of the trained net
lengthens the sequence): its threshold is gated off afterwards. The scores are
score_c = Σ_t softmax_c(U[t]) and the prediction argmax_c score_c.

Schedule: every layer leaks (plus its constant current b) in the ``start`` slot; then, in the
``thresholds`` slot and in this order for layer 1, 2, …: the synapses into the layer deliver the
spikes due now, the layer checks its threshold, the layer resets. A spike emitted at step t thus
reaches the next layer at step t + d within the same step when d = 0 — no extra step per layer,
unlike Brian2's default schedule (thresholds → synapses → resets, which delivers after the target
has checked its threshold).

Inputs are spike counts per step. A channel that fires c times in one step is given c sub-channels
(the most any channel fires in one step across the examples), each firing at most once per step,
every one with the channel's weights and delays: the delivered current is exactly c·w.

Examples are simulated side by side: ``chunk`` copies of the network, unconnected to each other,
in one Brian2 run. Code generation uses the ``numpy`` target: no compiler, deterministic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MAX_SYNAPSES_PER_RUN = 2_000_000  # bound on the synapses of one run (chunk copies of the net)


def load_params(path: str | Path) -> dict:
    """The exported network from its ``.npz``: layer arrays ``w{l}`` (out, in) float64,
    ``d{l}`` (out, in) int delays in steps, ``b{l}`` (out,) constant currents, ``lengths`` (L,)
    steps each layer exists, and scalars ``tau``, ``threshold_op``, ``steps`` (T of the input)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def layer_count(params: dict) -> int:
    return int(np.asarray(params["lengths"]).shape[0])


def _input_spikes(counts: np.ndarray, cmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, steps) of the input sub-channels: channel c of example e, k-th spike of its step
    -> sub-channel (e·C + c)·cmax + k."""
    c = counts.shape[2]
    e, t, ch = np.nonzero(counts)
    n = counts[e, t, ch]
    rep = np.repeat(np.arange(e.size), n)
    k = np.arange(rep.size) - np.repeat(np.cumsum(n) - n, n)
    index = (e[rep] * c + ch[rep]) * cmax + k
    return index.astype(np.int64), t[rep].astype(np.int64)


def _run_chunk(params: dict, counts: np.ndarray, layered: bool) -> tuple[list[np.ndarray], np.ndarray]:
    import brian2 as b2

    b2.prefs.codegen.target = "numpy"
    batch, _, channels = counts.shape
    layers = layer_count(params)
    lengths = [int(v) for v in np.asarray(params["lengths"])]
    total = lengths[-1]
    tau = float(params["tau"])
    op = str(params["threshold_op"])
    decay = 1.0 - 1.0 / tau
    dt = 1 * b2.ms
    cmax = max(1, int(counts.max(initial=0)))

    index, steps = _input_spikes(counts, cmax)
    source = b2.SpikeGeneratorGroup(batch * channels * cmax, index, steps * dt, dt=dt,
                                    when="thresholds", order=0, name="inputs")
    objects: list = [source]
    prev = source
    groups, spike_monitors = [], []
    n_in, fan = channels, cmax  # source neurons per channel (sub-channels for the input)
    for l in range(layers):
        w = np.asarray(params[f"w{l}"], dtype=np.float64)
        d = np.asarray(params[f"d{l}"], dtype=np.int64)
        bias = np.asarray(params[f"b{l}"], dtype=np.float64)
        n_out = w.shape[0]
        spiking = l < layers - 1
        group = b2.NeuronGroup(
            batch * n_out, "v : 1\nbias : 1 (constant)",
            threshold=f"v {op} 1 and t_in_timesteps < {lengths[l]}" if spiking else None,
            reset="v = 0" if spiking else None, dt=dt, name=f"layer{l}")
        group.bias = np.tile(bias, batch)
        group.run_regularly("v = decay * v + bias", when="start", order=l, name=f"leak{l}")
        if spiking and layered:
            group.thresholder["spike"].when, group.thresholder["spike"].order = "thresholds", 3 * l + 2
            group.resetter["spike"].when, group.resetter["spike"].order = "thresholds", 3 * l + 3
        post, pre = np.nonzero(w != 0)
        e = np.repeat(np.arange(batch), post.size)
        post_i = e * n_out + np.tile(post, batch)
        pre_j = np.tile(pre, batch)
        sub = np.tile(np.arange(fan), post_i.size)
        pre_i = (np.repeat(e * n_in + pre_j, fan)) * fan + sub
        post_i = np.repeat(post_i, fan)
        syn = b2.Synapses(prev, group, "w : 1", on_pre="v_post += w",
                          dt=dt, name=f"synapses{l}")
        syn.connect(i=pre_i, j=post_i)
        syn.w = np.repeat(np.tile(w[post, pre], batch), fan)
        syn.delay = np.repeat(np.tile(d[post, pre], batch), fan) * dt
        if layered:
            syn.pre.when, syn.pre.order = "thresholds", 3 * l + 1
        objects += [group, syn]
        groups.append(group)
        prev = group
        if spiking:
            spike_monitors.append(b2.SpikeMonitor(group, name=f"spikes{l}"))
        n_in, fan = n_out, 1
    membrane = b2.StateMonitor(groups[-1], "v", record=True, when="end", order=100, name="readout")
    net = b2.Network(*objects, *spike_monitors, membrane)
    net.run(total * dt, namespace={"decay": decay})

    spikes = []
    for l, mon in enumerate(spike_monitors):
        n = groups[l].N // batch
        raster = np.zeros((batch, total, n), dtype=np.uint8)
        i = np.asarray(mon.i[:], dtype=np.int64)
        t = np.rint(np.asarray(mon.t / dt)).astype(np.int64)
        np.add.at(raster, (i // n, t, i % n), 1)
        spikes.append(raster)
    classes = groups[-1].N // batch
    u = np.asarray(membrane.v[:], dtype=np.float64)  # (batch·C, T')
    u = u.reshape(batch, classes, total).transpose(0, 2, 1)
    return spikes, u


def simulate(params: dict, x: np.ndarray, chunk: int | None = None, layered: bool = True) -> dict:
    """Simulate the exported net on ``x`` (batch, T, channels) of non-negative integer spike counts.

    Returns ``spikes``: one (batch, T', n_l) uint8 raster per hidden layer (T' = the readout
    length, zero after the layer's own length), ``membranes``: (batch, T', C) readout membranes
    U[t], ``scores`` (batch, C) Σ_t softmax(U[t]) and ``predictions`` (batch,).
    ``layered=False`` keeps Brian2's default schedule instead (one extra step per layer: for
    comparison only). Raises ValueError for inputs that are not counts or of the wrong shape.
    """
    x = np.asarray(x)
    channels = np.asarray(params["w0"]).shape[1]
    if x.ndim != 3 or x.shape[2] != channels:
        raise ValueError(f"x must be (batch, T, {channels}); got shape {x.shape}")
    if x.shape[1] > int(params["steps"]):
        raise ValueError(f"x has {x.shape[1]} steps; the net was trained on {int(params['steps'])}")
    counts = np.rint(x).astype(np.int64)
    if (counts != x).any() or (counts < 0).any():
        raise ValueError("x must hold non-negative integer spike counts")
    layers = layer_count(params)
    cmax = max(1, int(counts.max(initial=0)))
    synapses = cmax * int(np.count_nonzero(params["w0"]))  # the input layer's, per sub-channel
    synapses += sum(int(np.count_nonzero(params[f"w{l}"])) for l in range(1, layers))
    if chunk is None:
        chunk = max(1, MAX_SYNAPSES_PER_RUN // max(1, synapses))
    spikes: list[list[np.ndarray]] = []
    membranes = []
    for start in range(0, x.shape[0], chunk):
        s, u = _run_chunk(params, counts[start:start + chunk], layered)
        spikes.append(s)
        membranes.append(u)
    u = np.concatenate(membranes)
    z = np.exp(u - u.max(axis=2, keepdims=True))
    scores = (z / z.sum(axis=2, keepdims=True)).sum(axis=1)
    return {"spikes": [np.concatenate(parts) for parts in zip(*spikes, strict=True)],
            "membranes": u, "scores": scores, "predictions": scores.argmax(axis=1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulate the exported net on its stored test examples.")
    parser.add_argument("--examples", type=int, default=None, help="how many (default: all stored)")
    args = parser.parse_args(argv)
    path = Path(__file__).with_suffix(".npz")
    params = load_params(path)
    x, y = params["test_x"], params["test_y"]
    if args.examples is not None:
        x, y = x[: args.examples], y[: args.examples]
    out = simulate(params, x)
    correct = int((out["predictions"] == y).sum())
    rate = [float(s.sum() / s.shape[0]) for s in out["spikes"]]
    print(f"{x.shape[0]} examples: accuracy {correct / max(1, x.shape[0]):.4f}; "
          f"spikes per example per hidden layer {', '.join(f'{r:.1f}' for r in rate)}")


if __name__ == "__main__":
    main(sys.argv[1:])
