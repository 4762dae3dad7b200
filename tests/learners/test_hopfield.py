"""Hopfield storage and retrieval against hand-computed values, and end-to-end memory runs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bioplaus import config, engine, patterns
from bioplaus.circuits.hopfield import TIE, Hopfield, couplings, energy
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.learners.hopfield import HopfieldLearner, ags_overlap
from tests.helpers import last_line, run_cli, summary_of


def _net(n: int, k: int, **options) -> Hopfield:
    return Hopfield(Task((n,), k, "memory"), **options)


# -- the couplings ----------------------------------------------------------------------------------


def test_couplings_of_three_patterns_on_six_neurons_by_hand() -> None:
    xi = torch.tensor([[1, 1, 1, -1, -1, -1],
                       [1, -1, 1, -1, 1, -1],
                       [1, 1, -1, -1, 1, 1]], dtype=torch.float32)
    # J_ij = (1/6) Σ_μ ξ_i ξ_j, worked out pair by pair, J_ii = 0
    expected = torch.tensor([[0, 1, 1, -3, 1, -1],
                             [1, 0, -1, -1, -1, 1],
                             [1, -1, 0, -1, -1, -3],
                             [-3, -1, -1, 0, -1, 1],
                             [1, -1, -1, -1, 0, 1],
                             [-1, 1, -3, 1, 1, 0]], dtype=torch.float32) / 6
    assert torch.allclose(couplings(xi), expected)
    for mode in ("dense", "factored"):
        net = _net(6, 3, couplings=mode)
        net.set_vectors(xi)
        assert torch.allclose(net.coupling_matrix(), expected)
        # E(ξ^1) = −½ Σ_{i≠j} J_ij ξ_i ξ_j = −(1/12)(Σ_μ (ξ^μ·ξ^1)² − 3·6) = −(36 + 4 + 0 − 18)/12
        assert torch.allclose(net.energy(xi[:1]), torch.tensor([-22 / 12]))
    # incremental storage adds outer products: the same J in two steps
    net = _net(6, 3)
    net.add_outer(xi[:2])
    net.add_outer(xi[2:])
    assert torch.allclose(net.J, expected)


def test_energy_never_increases_under_zero_temperature_asynchronous_updates() -> None:
    gen = torch.Generator().manual_seed(1)
    for case in range(6):
        n, k = 40 + 10 * case, 3 + 4 * case
        vectors = torch.randn(k, n, generator=gen) if case % 2 else patterns.rademacher(k, n, gen)
        for mode in ("dense", "factored"):
            net = _net(n, k, couplings=mode)
            net.set_vectors(vectors)
            sigma = patterns.rademacher(16, n, gen)
            previous = net.energy(sigma)
            for _ in range(6):                      # energy after every sweep of n updates
                sigma, _ = net.run(sigma, gen, sweeps=1)
                now = net.energy(sigma)
                assert bool((now <= previous + 1e-4).all()), (case, mode)
                previous = now
            # a replica whose last sweep flipped nothing is a fixed point: every spin is aligned
            # with its field
            sigma, flipped = net.run(sigma, gen, sweeps=40)
            still = flipped == 0
            assert bool(still.any())
            fields = sigma @ net.coupling_matrix()
            assert bool((fields * sigma >= -1e-5)[still].all())


def test_each_single_update_lowers_or_keeps_the_energy() -> None:
    # update by update on a hand-written loop: ΔE of σ_i ← sign(h_i) is −2|h_i| ≤ 0 (or 0)
    gen = torch.Generator().manual_seed(2)
    n, k = 30, 5
    xi = patterns.rademacher(k, n, gen)
    j = couplings(xi)
    sigma = patterns.rademacher(1, n, gen)[0]
    e = float(energy(j, sigma[None]))
    for i in torch.randperm(n, generator=gen).tolist() * 3:
        h = float(j[i] @ sigma)
        if h != 0:
            sigma[i] = 1.0 if h > 0 else -1.0
        new = float(energy(j, sigma[None]))
        assert new <= e + 1e-6
        e = new


def test_glauber_at_beta_to_zero_flips_fair_coins_and_at_large_beta_is_the_sign_rule() -> None:
    gen = torch.Generator().manual_seed(3)
    n, k, b = 200, 10, 64
    xi = patterns.rademacher(k, n, gen)
    start = xi.repeat(b // k + 1, 1)[:b]
    hot = _net(n, k, beta=1e-9)
    hot.set_vectors(xi)
    final, flipped = hot.run(start, torch.Generator().manual_seed(5), sweeps=1)
    # every spin is a fair coin whatever its field: P(+1) = 1/2, P(flip) = 1/2, overlap ≈ 0
    ups = float((final > 0).float().mean())
    se = 0.5 / math.sqrt(n * b)
    assert abs(ups - 0.5) < 5 * se
    assert abs(float(flipped.mean()) - 0.5) < 5 * se
    assert abs(float((final * start).mean())) < 5 * 2 * se
    # the coins do not follow the field: agreement of σ_i with sign(h_i) at the start is 1/2
    fields = start @ hot.J
    agree = float(((final * fields) > 0).float().mean())
    assert abs(agree - 0.5) < 5 * se
    # very large β: identical to β = ∞ with the same random stream, from noisy starts
    noisy, _ = patterns.cues_from(xi, 6, 0.3, gen)
    cold, sign = _net(n, k, beta=1e6), _net(n, k)
    cold.set_vectors(xi)
    sign.set_vectors(xi)
    a, _ = cold.run(noisy, torch.Generator().manual_seed(9), sweeps=3)
    c, _ = sign.run(noisy, torch.Generator().manual_seed(9), sweeps=3)
    assert torch.equal(a, c)
    # and at β = 1 the spins are random but biased along the field: between the two
    warm = _net(n, k, beta=1.0)
    warm.set_vectors(xi)
    w, _ = warm.run(start, torch.Generator().manual_seed(5), sweeps=1)
    assert 0.0 < float((w * start).mean()) < 1.0


def _reference(js: torch.Tensor, sigma: torch.Tensor, beta: float | None, gen: torch.Generator,
               sweeps: int) -> torch.Tensor:
    """Asynchronous Glauber dynamics spin by spin, the plain way, with the circuit's random stream
    (per sweep: the order, then one uniform number per spin and replica). ``js`` (B, N, N): the
    couplings each replica sees."""
    sigma = sigma.clone()
    b, n = sigma.shape
    for _ in range(sweeps):
        order = torch.rand(n, generator=gen).argsort()
        noise = torch.rand(n, b, generator=gen)
        for t in range(n):
            i = int(order[t])
            h = (js[:, i, :] * sigma).sum(dim=1)
            theta = 0.0 if beta is None else torch.special.logit(noise[t], eps=1e-12) / (2 * beta)
            sigma[:, i] = torch.sign(h - theta + TIE * sigma[:, i])
    return sigma


@pytest.mark.parametrize("beta", [None, 2.0])
def test_the_batched_dynamics_equal_a_spin_by_spin_loop(beta: float | None) -> None:
    gen = torch.Generator().manual_seed(6)
    n, k, b = 150, 6, 5                                  # n > BLOCK: several blocks per sweep
    xi = patterns.rademacher(k, n, gen)
    cues, _ = patterns.cues_from(xi[:b], 1, 0.3, gen)
    want = _reference(couplings(xi).expand(b, n, n), cues, beta, torch.Generator().manual_seed(2), 3)
    for mode in ("dense", "factored"):
        net = _net(n, k, couplings=mode, beta=beta, sweeps=3)
        net.set_vectors(xi)
        got, _ = net.run(cues, torch.Generator().manual_seed(2))
        assert torch.equal(got, want), mode
    # replicas restricted to their own rows: independent networks side by side
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]] * 3 + [[0, 0, 0, 1, 1, 1]] * 2, dtype=torch.float32)
    js = torch.stack([couplings(xi * m[:, None]) for m in mask])
    want = _reference(js, cues, beta, torch.Generator().manual_seed(3), 3)
    net = _net(n, k, couplings="factored", beta=beta, sweeps=3)
    net.set_vectors(xi)
    got, _ = net.run(cues, torch.Generator().manual_seed(3), mask=mask)
    assert torch.equal(got, want)


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize("rho", [0.1, 0.5, 1.0])
def test_supervised_class_mean_sign_error_is_phi_of_minus_one_over_sqrt_rho(rho: float) -> None:
    # Φ(−1/√ρ) is the M → ∞ limit (fixed ρ) of the binomial tail P(Σ_a χ_a < 0); at M = 401 the
    # exact tail exceeds it by 6.2 % (ρ = 0.1), 0.2 % (0.5), < 0.1 % (1): allowed for below
    m = 401                                             # odd M: no ties in sign(Σ_a η)
    r = 1 / math.sqrt(1 + m * rho)                      # ρ = (1 − r²)/(M r²)
    assert math.isclose((1 - r * r) / (m * r * r), rho)
    k, n, chunk = 100, 2000, 10
    gen = torch.Generator().manual_seed(int(rho * 100))
    archetypes = patterns.rademacher(k, n, gen)
    net = _net(n, k, couplings="factored")
    learner = HopfieldLearner(net, net.task, protocol="supervised", quality=r)
    for start in range(0, k, chunk):                    # storage batch by batch, 10 classes each
        eta, labels = patterns.examples(archetypes[start:start + chunk], m, r, gen)
        learner.train_step(eta, labels + start)
    assert torch.allclose(learner.counts, torch.full((k,), float(m)))
    means = learner.sums / (r * learner.counts[:, None])
    assert torch.allclose(net.vectors, means)           # the stored vectors are ξ̂ = Σ_a η/(rM)
    error = float((torch.sign(means) != archetypes).float().mean())
    predicted = _normal_cdf(-1 / math.sqrt(rho))
    se = math.sqrt(predicted * (1 - predicted) / (k * n))
    assert abs(error - predicted) < 4 * se + 0.07 * predicted, (error, predicted)


def test_a_stored_pattern_is_a_fixed_point_at_load_0_05_with_1000_neurons() -> None:
    gen = torch.Generator().manual_seed(4)
    n, k = 1000, 50
    xi = patterns.rademacher(k, n, gen)
    net = _net(n, k, couplings="factored", sweeps=5)
    learner = HopfieldLearner(net, net.task)
    learner.train_step(xi, torch.arange(k))
    final, flipped = net.run(xi, gen)
    overlaps = (final * xi).mean(dim=1)
    assert float(overlaps.min()) >= 0.98              # at most 1 % of the spins flipped
    assert float(flipped.max()) == 0.0                # and it has stopped moving
    # dense and factored couplings give the same dynamics
    dense = _net(n, k, sweeps=5)
    dense.set_vectors(xi)
    cues, _ = patterns.cues_from(xi[:8], 1, 0.2, gen)
    a, _ = dense.run(cues, torch.Generator().manual_seed(1))
    b, _ = net.run(cues, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_ags_theory_curve() -> None:
    # replica-symmetric T = 0 retrieval overlap: ≈ 1 at low load, ≈ 0.967 at the edge α_c ≈ 0.138
    assert ags_overlap(0.01) > 0.9999
    assert abs(ags_overlap(0.137) - 0.967) < 0.01
    assert math.isnan(ags_overlap(0.145))


# -- data ------------------------------------------------------------------------------------------


def test_pattern_generators_have_the_stated_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    d = patterns.diluted(4, 20000, 0.3, gen)
    assert abs(float((d == 0).float().mean()) - 0.3) < 0.01
    assert abs(float((d == 1).float().mean()) - 0.35) < 0.01
    xi = patterns.rademacher(3, 20000, gen)
    eta, labels = patterns.examples(xi, 5, 0.4, gen)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert abs(float((eta * xi.repeat_interleave(5, 0)).mean()) - 0.4) < 0.01
    cues, targets = patterns.cues_from(d, 2, 0.1, gen)
    assert set(cues.unique().tolist()) == {-1.0, 1.0}
    flipped = (cues != targets) & (targets != 0)
    assert int(flipped.sum(dim=1).max()) <= 2000
    images = torch.tensor([[[0.0, 9.0], [8.0, 16.0]]])
    assert patterns.binarise(images, 0.5, 16.0).tolist() == [[-1.0, 1.0, -1.0, 1.0]]


def test_bad_pattern_options_are_usage_errors_naming_the_key() -> None:
    with pytest.raises(UsageError, match=r"data\.kind must be one of rademacher"):
        config.compose(["learner=hopfield", "data.kind=gaussian"])
    with pytest.raises(UsageError, match=r"data.dilution must be a number ≥ 0 and < 1; got 1.5"):
        config.compose(["learner=hopfield", "data.dilution=1.5"])
    with pytest.raises(UsageError, match=r"network_size=2 needs circuit\.couplings=factored"):
        engine.build(config.compose(["learner=hopfield", "learner.network_size=2"]))


# -- end to end --------------------------------------------------------------------------------------


def _run(tmp_path: Path, *overrides: str) -> dict:
    cfg = config.compose(["learner=hopfield", f"paths.runs={tmp_path}", "trainer.progress=none",
                          "threads=1", *overrides])
    return engine.train(cfg, quiet=True)


def test_default_run_retrieves_patterns_beyond_an_empty_network(tmp_path: Path) -> None:
    summary = _run(tmp_path)
    # cues have 10 % of their spins flipped: initial overlap 0.8; retrieval must repair them
    assert summary["test_overlap"] > 0.99 and summary["test_retrieved_fraction"] == 1.0
    assert summary["best_val_overlap"] == summary["val_overlap"]
    assert (Path(summary["run_dir"]) / summary["figure"]).exists()
    # the same dynamics with nothing stored (J = 0) leave every cue where it was
    data, _, learner = engine.build(config.compose(["learner=hopfield", "threads=1"]))
    untrained = learner.evaluate(data.test_x, data.test_y, 1000)
    assert abs(untrained["overlap"] - 0.8) < 1e-6 and untrained["retrieved_fraction"] == 0.0


def test_supervised_and_unsupervised_examples_retrieve_the_archetypes(tmp_path: Path) -> None:
    data = ["data.kind=examples", "data.neurons=400", "data.patterns=5", "data.examples=40",
            "data.quality=0.4", "data.cue_flip=0.2", "learner.quality=0.4", "trainer.batch_size=40"]
    sup = _run(tmp_path, *data, "learner.protocol=supervised")
    uns = _run(tmp_path, *data, "learner.protocol=unsupervised")
    # ρ = (1 − 0.16)/(40·0.16) = 0.13: the class means carry the archetypes; the cues start at 0.6
    for s in (sup, uns):
        assert s["test_overlap"] > 0.95, s
        assert s["test_archetype_accuracy"] == 1.0
        assert s["test_ncm_accuracy"] == 1.0


def test_multitasking_networks_follow_the_hierarchy_at_small_dilution(tmp_path: Path) -> None:
    summary = _run(tmp_path, "data.kind=diluted", "data.neurons=4000", "data.patterns=3",
                   "data.dilution_sweep=[0.2,0.4]", "data.cues=2", "data.cue_flip=0.0",
                   "data.cue_from=first", "circuit.couplings=factored", "circuit.sweeps=4",
                   "learner.network_size=3", "trainer.batch_size=6")
    for j, d in enumerate((0.2, 0.4)):
        d_hat = summary[f"test_net{j}_dilution"]
        assert abs(d_hat - d) < 0.02
        for k in (1, 2, 3):
            assert abs(summary[f"test_net{j}_overlap_{k}"] - (1 - d_hat) * d_hat ** (k - 1)) < 0.03


@pytest.mark.slow
def test_memory_run_resumes_after_sigkill_to_the_same_result(tmp_path: Path) -> None:
    run = ["learner=hopfield", "data.neurons=300", "data.patterns=60", "learner.patterns_per_epoch=6",
           "learner.eval_cues=stored", "learner.eval_samples=40", "circuit.couplings=factored",
           "trainer.epochs=10", "trainer.batch_size=6", "seed=5", "threads=1", "trainer.progress=lines"]
    full = tmp_path / "full"
    result = run_cli("run", *run, f"hydra.run.dir={full}")
    assert result.returncode == 0, result.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bioplaus", "run", *run, f"hydra.run.dir={killed}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    resumed = run_cli("run", f"trainer.resume={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert last_line(resumed.stdout) == str(killed)
    a, b = summary_of(full), summary_of(killed)
    for key in ("test_overlap", "best_val_overlap", "alpha_c", "test_energy", "stored_patterns"):
        assert a[key] == b[key], key
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["val_overlap"] for r in records] == [
        json.loads(line)["val_overlap"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert (killed / "capacity.png").exists()


@pytest.mark.slow
def test_sweep_bench_and_compare_use_the_monitored_overlap(tmp_path: Path) -> None:
    import yaml

    spec = {"method": "grid", "command": ["bioplaus", "run", "logger=wandb", "${args_no_hyphens}"],
            "parameters": {"learner": {"value": "hopfield"}, "data.cue_flip": {"values": [0.1, 0.45]}}}
    path = tmp_path / "memory_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_cli("sweep", str(path), "--local", f"paths.runs={tmp_path}/runs", "threads=1")
    assert result.returncode == 0, result.stderr
    sweep_dir = Path(last_line(result.stdout))
    assert yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["metric"] == {
        "name": "best_val_overlap", "goal": "maximize"}
    records = [json.loads(line) for line in (sweep_dir / "sweep.jsonl").read_text().splitlines()]
    for record in records:
        assert record["metric"] == summary_of(record["run_dir"])["best_val_overlap"]
    best = json.loads((sweep_dir / "summary.json").read_text())["best"]
    assert best["parameters"]["data.cue_flip"] == 0.1       # 10 % noise is repaired, 45 % is not
    assert min(r["metric"] for r in records) < best["metric"]

    out = tmp_path / "results"
    small = ["data.neurons=200", "data.patterns=40", "learner.patterns_per_epoch=10", "trainer.epochs=4",
             "learner.eval_samples=32", "threads=1"]
    bench = run_cli("bench", "hopfield_capacity", "--seeds", "0", "1", "--name", "m", "--out", str(out),
                    "--runs", str(tmp_path / "bench"), *small)
    assert bench.returncode == 0, bench.stderr
    row = json.loads((out / "m.json").read_text())["rows"][0]
    values = [summary_of(d)["test_overlap"] for d in row["run_dirs"]]
    assert row["metric"] == "overlap" and row["test_overlap_values"] == values
    assert abs(row["test_overlap_mean"] - sum(values) / 2) < 1e-12
    assert "| hopfield_capacity | hopfield | hopfield N=200, β=∞, factored | overlap " in (
        out / "m.md").read_text()

    compared = run_cli("compare", *row["run_dirs"])
    assert compared.returncode == 0, compared.stderr
    assert f"{values[0]:.4f} overlap" in compared.stdout


def test_a_sweep_without_a_metric_optimises_the_runs_monitored_metric(tmp_path: Path) -> None:
    import yaml

    from bioplaus import sweep

    for learner, metric in (("hopfield", "best_val_overlap"), ("backprop", "best_val_accuracy")):
        spec = {"method": "grid", "parameters": {"learner": {"value": learner}},
                "command": ["bioplaus", "run", "${args_no_hyphens}"]}
        path = tmp_path / f"{learner}.yaml"
        path.write_text(yaml.safe_dump(spec))
        assert sweep.load(path, [])["metric"] == {"name": metric, "goal": "maximize"}
    # trainer.monitor and monitor_mode given to every run decide it too
    assert sweep.load(path, ["trainer.monitor=energy", "trainer.monitor_mode=min"])["metric"] == {
        "name": "best_val_energy", "goal": "minimize"}


def test_dense_p4_learner_runs_store_beyond_pairwise_capacity(tmp_path: Path) -> None:
    # K = 60 patterns on N = 40 neurons (load 1.5): hebb storage in the P = 4 network retrieves the
    # cues; the pairwise network (P = 2, same circuit) cannot at this load
    data = ["data.neurons=40", "data.patterns=60", "data.cues=1", "trainer.batch_size=60",
            "circuit=dense_hebbian", "circuit.sweeps=5"]
    dense = _run(tmp_path, *data, "circuit.p=4")
    pair = _run(tmp_path, *data, "circuit.p=2")
    assert dense["test_overlap"] > 0.95, dense
    assert pair["test_overlap"] < 0.7, pair


def test_dense_supervised_and_unsupervised_examples_retrieve_the_archetypes(tmp_path: Path) -> None:
    data = ["data.kind=examples", "data.neurons=100", "data.patterns=4", "data.examples=20",
            "data.quality=0.5", "data.cue_flip=0.2", "learner.quality=0.5", "trainer.batch_size=20",
            "circuit=dense_hebbian", "circuit.sweeps=5"]
    for protocol in ("supervised", "unsupervised"):
        s = _run(tmp_path, *data, f"learner.protocol={protocol}")
        assert s["test_overlap"] > 0.95 and s["test_archetype_accuracy"] == 1.0, (protocol, s)


def test_dense_capacity_preset_stores_thousands_of_patterns_on_50_neurons(tmp_path: Path) -> None:
    s = _run(tmp_path, "experiment=dense_capacity")
    # pairwise capacity at N = 50 is about 7 patterns; P = 4 keeps N³/(2·5!!·ln N) ≈ 1065 error-free
    assert 1000 <= s["k_max"] <= 3000, s
    assert (Path(s["run_dir"]) / s["figure"]).exists()


def test_modern_hopfield_learner_repairs_noisy_cues(tmp_path: Path) -> None:
    s = _run(tmp_path, "learner=modern_hopfield", "circuit.beta=0.1")
    # cues have 10 % of their entries flipped: cosine 0.8 with the target before retrieval
    assert s["test_overlap"] > 0.999 and s["test_energy_rise"] <= 1e-3, s
    assert (Path(s["run_dir"]) / s["figure"]).exists()
    # a flat softmax (β → 0) returns the mean of the stored patterns instead
    flat = _run(tmp_path, "learner=modern_hopfield", "circuit.beta=1e-6")
    assert flat["test_overlap"] < 0.5, flat


def test_modern_retrieval_fmnist_preset_retrieves_half_masked_images(tmp_path: Path) -> None:
    from bioplaus import data

    try:
        data.check_available(config.compose(["learner=modern_hopfield",
                                             "experiment=modern_retrieval_fmnist"]).data)
    except UsageError:
        pytest.skip("Fashion-MNIST is not installed")
    s = _run(tmp_path, "learner=modern_hopfield", "experiment=modern_retrieval_fmnist")
    assert s["test_retrieved_fraction"] >= 0.95 and s["stored_patterns"] == 1000, s
