"""`bioplaus export brian2`: the exported Brian2 net reproduces the PyTorch `snn` spike for spike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("brian2")
pytest.importorskip("DCLS")

from bioplaus import cli
from bioplaus.circuits.snn import SNN
from bioplaus.core import Task
from bioplaus.errors import UsageError
from bioplaus.export_brian2 import (
    check,
    export_run,
    fold_batchnorm,
    load_export,
    network_params,
    torch_reference,
    write_export,
)

# -- a: a hand-made net ----------------------------------------------------------------------------
# 2 inputs -> 2 LIF neurons (τ = 2: leak factor 1/2, no BatchNorm) -> 2 leaky readouts (identity
# weights, delay 0). T = 8, T_d = 5 (each delay layer adds 2 steps: hidden layer 10 steps,
# readout 12).
#   neuron 0: 0.6 from input 0 with delay 1, 0.6 from input 1 with delay 3
#   neuron 1: 1.0 from input 0 with delay 0, 0.3 from input 1 with delay 2
# input 0 fires at step 1 and twice at step 4 (a count of 2); input 1 at steps 0 and 5.
#   neuron 0: I = 0.6 (t=2), 0.6 (t=3), 1.2 (t=5), 0.6 (t=8)
#             H = 0.6, 0.9, 0.45, 0.225 + 1.2 = 1.425 ≥ 1 -> spike at 5 (one input spike would not do)
#   neuron 1: I = 1.0 (t=1), 0.3 (t=2), 2.0 (t=4), 0.3 (t=7)
#             H = 1.0 ≥ 1 -> spike at 1 (exactly at threshold); 0.3, 0.15, 0.075 + 2 -> spike at 4
# readout: U_c[t] = U_c[t−1]/2 + S_c[t]; the spike at step t counts at step t (no extra latency).
HAND_SPIKES = {(5, 0), (1, 1), (4, 1)}
W1 = [[0.6, 0.6], [1.0, 0.3]]
D1 = [[1, 3], [0, 2]]


def hand_net() -> SNN:
    net = SNN(Task((8, 2), 2), hidden=[2], delays=True, max_delay=5, tau=2.0, batchnorm=False)
    hidden, out = net.blocks[0].synapse, net.blocks[1].synapse
    with torch.no_grad():
        hidden.conv.weight[:, :, 0] = torch.tensor(W1)
        hidden.conv.P[0, :, :, 0] = hidden.limit - torch.tensor(D1, dtype=torch.float32)
        out.conv.weight[:, :, 0] = torch.eye(2)
        out.conv.P[0, :, :, 0] = float(out.limit)  # delay 0
    return net.eval()


def hand_input() -> np.ndarray:
    x = np.zeros((1, 8, 2))
    x[0, 1, 0], x[0, 4, 0] = 1, 2
    x[0, 0, 1], x[0, 5, 1] = 1, 1
    return x


def hand_readout() -> np.ndarray:
    u = np.zeros((12, 2))
    for c in range(2):
        level = 0.0
        for t in range(12):
            level = level / 2 + float((t, c) in HAND_SPIKES)
            u[t, c] = level
    return u


@pytest.fixture
def hand_export(tmp_path: Path) -> tuple[SNN, Path]:
    net = hand_net()
    x = hand_input()
    script = write_export(network_params(net), tmp_path / "hand.py", x, np.array([0]))
    return net, script


def test_hand_made_net_gives_the_hand_computed_spikes_in_both_simulators(hand_export):
    net, script = hand_export
    params = network_params(net)
    assert params["d0"].tolist() == D1 and params["d1"].tolist() == [[0, 0], [0, 0]]
    assert params["lengths"].tolist() == [10, 12]
    x = hand_input()
    module = load_export(script)
    brian = module.simulate(module.load_params(script.with_suffix(".npz")), x)
    reference = torch_reference(net, x)
    for name, result in (("torch", reference), ("brian2", brian)):
        raster = result["spikes"][0][0]
        assert {tuple(p) for p in np.argwhere(raster)} == HAND_SPIKES, name
        np.testing.assert_allclose(result["membranes"][0], hand_readout(), atol=1e-12, err_msg=name)
    report = check(net, script, x)
    assert report["identical_spikes"] == 1.0 and report["identical_predictions"] == 1.0


def test_brian2_default_schedule_would_add_a_step_per_layer(hand_export):
    """The layer-ordered schedule is what makes the match: with the synapses moved back to
    Brian2's default slot the same net fires later."""
    _, script = hand_export
    module = load_export(script)
    params = module.load_params(script.with_suffix(".npz"))
    late = module.simulate(params, hand_input(), layered=False)
    # input -> neuron 1 with delay 0 now arrives after its threshold check: no spike at step 1
    assert (1, 1) not in {tuple(p) for p in np.argwhere(late["spikes"][0][0])}
    assert {tuple(p) for p in np.argwhere(late["spikes"][0][0])} != HAND_SPIKES


def test_spike_counts_above_one_are_delivered_whole():
    net = hand_net()
    x = np.zeros((3, 8, 2))
    x[:, 2, 0] = [0, 1, 3]  # neuron 1: 1.0 per input spike at once
    x[:, 3, 1] = [4, 0, 2]
    params = network_params(net)
    from bioplaus import brian2_net

    brian = brian2_net.simulate(params, x)
    reference = torch_reference(net, x)
    for got, ref in zip(brian["spikes"], reference["spikes"], strict=True):
        np.testing.assert_array_equal(got[:, : ref.shape[1]], ref)
    np.testing.assert_allclose(brian["membranes"], reference["membranes"], atol=1e-12)


@pytest.mark.parametrize(("delays", "neurons"), [(True, "spikingjelly"), (False, "snntorch")])
def test_random_two_layer_net_with_batchnorm_matches(delays, neurons, tmp_path):
    """Two spiking layers (zero latency between them), BatchNorm with non-trivial statistics,
    counts up to 3: every spike and the readout agree."""
    torch.manual_seed(1)
    net = SNN(Task((12, 4), 3), hidden=[6, 5], delays=delays, max_delay=5, tau=1.5, neurons=neurons)
    with torch.no_grad():
        for block in net.blocks[:-1]:
            block.synapse.weight.mul_(3.0) if not delays else block.synapse.conv.weight.mul_(3.0)
            block.norm.running_mean.uniform_(-0.2, 0.2)
            block.norm.running_var.uniform_(0.5, 1.5)
            block.norm.weight.uniform_(0.5, 1.5)
            block.norm.bias.uniform_(-0.1, 0.3)
    net.eval()
    x = np.random.default_rng(0).poisson(0.4, size=(20, 12, 4)).clip(0, 3).astype(float)
    script = write_export(network_params(net), tmp_path / "net.py")
    report = check(net, script, x)
    assert report["torch_spikes"] > 20  # the net fires: the agreement is not trivial
    assert report["identical_spikes"] == 1.0 and report["identical_predictions"] == 1.0
    assert report["max_membrane_difference"] < 1e-9


def test_batchnorm_folds_into_a_scale_and_a_constant_current():
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(5)
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.normal_()
        norm.bias.normal_()
    norm.eval().double()
    x = torch.randn(7, 5, dtype=torch.float64)
    scale, bias = fold_batchnorm(norm)
    np.testing.assert_allclose(x.numpy() * scale + bias, norm(x).detach().numpy(), atol=1e-12)


def test_exported_file_runs_in_a_fresh_process_with_only_numpy_and_brian2(hand_export):
    _, script = hand_export
    blocker = ("import sys, runpy\n"
               "for name in ('torch', 'bioplaus', 'omegaconf', 'hydra', 'DCLS', 'spikingjelly',\n"
               "             'snntorch'):\n"
               "    sys.modules[name] = None\n"
               f"sys.argv = [{str(script)!r}]\n"
               f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True,
                          timeout=300, cwd=script.parent, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "1 examples: accuracy" in done.stdout


# -- errors -----------------------------------------------------------------------------------------


def _exit_code(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    return int(e.value.code), capsys.readouterr().err


def test_missing_run_folder_exits_2(tmp_path, capsys):
    code, err = _exit_code(["export", "brian2", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no run folder" in err


def test_missing_brian2_exits_2_saying_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "brian2", None)  # import brian2 -> ImportError
    code, err = _exit_code(["export", "brian2", str(tmp_path)], capsys)
    assert code == 2 and "pip install 'bioplaus[export]'" in err
    assert not list(tmp_path.iterdir())


def test_a_non_snn_run_exits_2(tmp_path, capsys):
    import bioplaus

    cfg = bioplaus.compose(["learner=backprop", "circuit=mlp", "data=digits", "trainer.epochs=1",
                            "device=cpu", f"paths.runs={tmp_path}", "trainer.progress=none"])
    run_dir = bioplaus.train(cfg, quiet=True)["run_dir"]
    code, err = _exit_code(["export", "brian2", run_dir], capsys)
    assert code == 2 and "'snn' circuit" in err and "mlp" in err
    assert not (Path(run_dir) / "brian2_net.py").exists()


@pytest.mark.slow
def test_an_snn_run_on_images_exits_2(tmp_path, capsys):
    import bioplaus

    cfg = bioplaus.compose(["learner=backprop", "circuit=snn", "circuit.hidden=[4]", "data=digits",
                            "data.train_subset=100", "trainer.epochs=1", "device=cpu",
                            f"paths.runs={tmp_path}", "trainer.progress=none"])
    run_dir = bioplaus.train(cfg, quiet=True)["run_dir"]
    code, err = _exit_code(["export", "brian2", run_dir], capsys)
    assert code == 2 and "spike counts" in err
    assert not (Path(run_dir) / "brian2_net.py").exists()


def test_cli_exports_and_exits_1_when_the_check_fails(tmp_path, capsys, monkeypatch):
    import bioplaus
    from bioplaus import export_brian2

    cfg = bioplaus.compose(["learner=dcls", "device=cpu", f"paths.runs={tmp_path}",
                            "trainer.progress=none", "trainer.epochs=1", "circuit.hidden=[4]",
                            "circuit.max_delay=5", "data.channels=3", "data.steps=10", "data.gap=1",
                            "data.train=64", "data.test=16", "trainer.batch_size=32"])
    run_dir = bioplaus.train(cfg, quiet=True)["run_dir"]
    out = tmp_path / "exported" / "net.py"
    cli.main(["export", "brian2", run_dir, "--out", str(out), "--check", "16"])
    printed = capsys.readouterr().out
    assert out.exists() and out.with_suffix(".npz").exists() and "PASS" in printed
    monkeypatch.setattr(export_brian2, "SPIKE_TOLERANCE", 1.1)  # no check can reach it
    code, _ = _exit_code(["export", "brian2", run_dir, "--out", str(out), "--check", "16"], capsys)
    assert code == 1


def test_bad_arguments_exit_2(capsys):
    code, err = _exit_code(["export", "nest", "somewhere"], capsys)
    assert code == 2 and "usage: bioplaus export brian2" in err


# -- b: a trained dcls run --------------------------------------------------------------------------


@pytest.mark.slow
def test_trained_dcls_run_matches_spike_for_spike(tmp_path):
    import bioplaus

    cfg = bioplaus.compose([
        "learner=dcls", "device=cpu", "threads=1", f"paths.runs={tmp_path}", "trainer.progress=none",
        "trainer.epochs=6", "trainer.batch_size=32", "circuit.hidden=[32]", "circuit.max_delay=11",
        "data.channels=6", "data.steps=24", "data.gap=2", "data.train=320", "data.test=200", "seed=0"])
    summary = bioplaus.train(cfg, quiet=True)
    assert summary["test_accuracy"] >= 0.5  # trained: chance is 0.25
    script, report = export_run(summary["run_dir"], check_examples=100)
    assert report is not None
    assert report["identical_spikes"] >= 0.999
    assert report["identical_predictions"] >= 0.99
    assert report["torch_spikes"] > 0
    done = subprocess.run([sys.executable, str(script), "--examples", "20"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    with pytest.raises(UsageError):
        export_run(summary["run_dir"], check_examples=-1)
