"""Tests of the `g2g` circuit: mask construction and sparsity, groupings, fan-in-corrected init,
masked gradients, the block path, dynamic sparse training (hand-made rewiring cases, constant
edge count, zero optimizer moments through the engine), and learning digits under backprop,
mono_forward and forward_forward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import bioplaus
from bioplaus.circuits.g2g import (
    G2G,
    SparseDense,
    choose_rewiring,
    contiguous_groups,
    interleaved_groups,
    pearson_from_moments,
    within_mask,
)
from bioplaus.circuits.mlp import Dense
from bioplaus.core import Task
from bioplaus.engine import _Loop, build, resume
from bioplaus.errors import UsageError
from bioplaus.registry import get_circuit, get_learner
from tests.floors import assert_above

G, P = 8, 0.15
EXPECTED_SPARSITY = (1 - 1 / G) * (1 - P)  # 0.74375


def test_registered_and_trainable_by_the_feedforward_learners():
    assert get_circuit("g2g") is G2G
    for name in ("backprop", "mono_forward", "forward_forward", "counter_current", "tpsgd"):
        assert get_learner(name).supports("g2g"), name


def test_sparsity_of_every_layer_at_the_defaults():
    torch.manual_seed(0)
    net = G2G(Task((784,), 10), hidden=[512, 512, 512], groups=G, p_between=P, mask_seed=3)
    for mask in net.masks():
        sparsity = 1.0 - float(mask.mean())
        assert abs(sparsity - EXPECTED_SPARSITY) < 0.005, sparsity
    metrics = net.structure_metrics()
    assert abs(metrics["circuit_sparsity"] - EXPECTED_SPARSITY) < 0.005
    assert len(metrics["circuit_sparsity_layers"]) == 3
    assert isinstance(net.blocks[-1], Dense) and not isinstance(net.blocks[-1], SparseDense)
    assert net.block_widths == [512, 512, 512, 10]


def test_reported_sparsity_is_that_of_the_weights_the_forward_pass_applies():
    """With every stored weight nonzero, the summary's sparsity is still the masks' — read off the
    forward pass (the entries it reads); a pass that skipped its mask would report 0 %."""
    for path in ("masked", "block"):
        circuit = G2G(Task((64,), 10), hidden=[32, 32], p_between=0.0 if path == "block" else P, path=path)
        with torch.no_grad():
            for block in circuit.sparse_blocks:
                block.linear.weight.uniform_(0.5, 1.0)
        metrics = circuit.structure_metrics()
        masks = circuit.masks()
        expected = 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
        assert metrics["circuit_sparsity"] == pytest.approx(expected) and expected > 0.7, (path, metrics)
        assert metrics["circuit_active_edges"] == sum(int(m.sum()) for m in masks)


def test_headless_circuit_and_block_api():
    net = G2G(Task((1, 8, 8), 10), hidden=[32, 16], head=False)
    assert len(net.blocks) == 2 and net.block_widths == [32, 16]
    block = net.blocks[0]
    assert isinstance(block, Dense)  # forward_forward's check; learners use the Dense API
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(block(x), block.act(block.pre(x)))
    torch.testing.assert_close(block.pre(x), x.flatten(1) @ (block.linear.weight * block.mask).t()
                               + block.linear.bias)
    assert block.out_features == 32


def test_masks_follow_the_seed():
    task = Task((64,), 10)
    a = G2G(task, hidden=[64], mask_seed=1).masks()[0]
    b = G2G(task, hidden=[64], mask_seed=1).masks()[0]
    c = G2G(task, hidden=[64], mask_seed=2).masks()[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_index_grouping_is_block_diagonal_plus_bernoulli():
    n_in, n_out = 64, 32
    net = G2G(Task((n_in,), 3), hidden=[n_out], groups=4, p_between=0.0, grouping="index")
    i = torch.arange(n_out).unsqueeze(1)
    j = torch.arange(n_in).unsqueeze(0)
    expected = ((i // 8) == (j // 16)).float()  # contiguous ensembles: 8 outputs, 16 inputs each
    assert torch.equal(net.masks()[0], expected)
    dense_between = G2G(Task((n_in,), 3), hidden=[n_out], groups=4, p_between=1.0).masks()[0]
    assert bool((dense_between == 1).all())
    some = G2G(Task((n_in,), 3), hidden=[n_out], groups=4, p_between=0.3).masks()[0]
    assert bool((some[expected.bool()] == 1).all())  # within blocks: always dense
    between = some[~expected.bool()]
    assert 0.2 < float(between.mean()) < 0.4


def test_mixer_alternates_contiguous_and_interleaved_inputs():
    net = G2G(Task((64,), 3), hidden=[32, 32, 32], groups=4, p_between=0.0, grouping="mixer")
    m1, m2, m3 = net.masks()
    i = torch.arange(32).unsqueeze(1)
    assert torch.equal(m1, ((i // 8) == (torch.arange(64).unsqueeze(0) // 16)).float())
    assert torch.equal(m2, ((i // 8) == (torch.arange(32).unsqueeze(0) % 4)).float())
    assert torch.equal(m3, ((i // 8) == (torch.arange(32).unsqueeze(0) // 8)).float())
    # every ensemble of layer 2 reads 1/G of every ensemble of layer 1: the mixing
    reads = m2[0].view(4, 8).sum(1)
    assert torch.equal(reads, torch.full((4,), 2.0))


def test_random_grouping_is_balanced_and_not_contiguous():
    net = G2G(Task((64,), 3), hidden=[32, 32], groups=4, p_between=0.0, grouping="random", mask_seed=0)
    for block, mask in zip(net.blocks[:2], net.masks(), strict=True):
        assert torch.equal(torch.bincount(block.in_groups, minlength=4),
                           torch.full((4,), block.in_groups.numel() // 4))
        assert torch.equal(torch.bincount(block.out_groups, minlength=4), torch.full((4,), 8))
        assert torch.equal(mask, within_mask(block.in_groups, block.out_groups))
        assert not torch.equal(block.in_groups, contiguous_groups(block.in_groups.numel(), 4))
        assert float(mask.sum(1).min()) == float(mask.sum(1).max())  # every unit: one ensemble's fan-in
    assert torch.equal(interleaved_groups(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]))


@pytest.mark.parametrize("init", ["default", "kaiming_uniform", "kaiming_normal", "xavier_normal"])
def test_fan_in_corrected_initialisation(init):
    torch.manual_seed(0)
    net = G2G(Task((256,), 10), hidden=[512], p_between=P, init=init)
    block = net.blocks[0]
    w, mask = block.linear.weight.detach(), block.mask
    assert bool((w[mask == 0] == 0).all())
    k = mask.sum(1)
    if init == "default":
        assert bool((w.abs().max(1).values <= 1 / k.sqrt() + 1e-7).all())
        assert bool((block.linear.bias.abs() <= 1 / k.sqrt()).all())
        target = 1.0 / 3.0  # U(±1/√k): k·Var = 1/3
    elif init in ("kaiming_uniform", "kaiming_normal"):
        target = 2.0
    else:
        target = None
    if target is not None:
        ratio = float(w.pow(2).sum(1).mean())  # mean over units of Σ_j w_ij² = k_i·Var_i
        assert abs(ratio - target) / target < 0.05, ratio
    # the variance follows the row's actual fan-in, not n_in: pre-activations of unit-variance
    # inputs have variance ≈ target whatever the sparsity
    z = torch.randn(4096, 256) @ w.t()
    if target is not None:
        assert abs(float(z.var()) - target) / target < 0.1


def test_masked_entries_get_exactly_zero_gradient():
    torch.manual_seed(0)
    net = G2G(Task((40,), 3), hidden=[24, 16], groups=4, p_between=0.2)
    loss = net(torch.randn(10, 40)).pow(2).sum()
    loss.backward()
    for block in net.blocks[:2]:
        grad = block.linear.weight.grad
        assert bool((grad[block.mask == 0] == 0).all())
        assert float(grad[block.mask == 1].abs().sum()) > 0


def test_block_path_equals_the_masked_path():
    torch.manual_seed(0)
    task = Task((64,), 10)
    block = G2G(task, hidden=[32, 32], p_between=0.0, groups=4)
    masked = G2G(task, hidden=[32, 32], p_between=0.0, groups=4, path="masked")
    assert block.paths == ["block", "block"] and masked.paths == ["masked", "masked"]
    assert G2G(task, hidden=[32], p_between=0.15).paths == ["masked"]
    masked.load_state_dict(block.state_dict())
    x = torch.randn(7, 64)
    out_b, out_m = block(x), masked(x)
    torch.testing.assert_close(out_b, out_m)
    out_b.sum().backward()
    out_m.sum().backward()
    for pb, pm in zip(block.parameters(), masked.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pm.grad)
    with pytest.raises(UsageError, match="path=block"):
        G2G(task, hidden=[32], p_between=0.15, path="block")


# -- dynamic sparse training -------------------------------------------------------------------


def test_choose_rewiring_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                         [0.0, 1.0, 1.0, 0.0],
                         [1.0, 0.0, 0.0, 1.0]])  # 6 active, 6 inactive
    prune_score = torch.tensor([[0.5, 0.1, 9.0, 9.0],
                                [9.0, 0.7, 0.2, 9.0],
                                [0.9, 9.0, 9.0, 0.3]])
    regrow_score = torch.tensor([[9.0, 9.0, 0.1, 0.8],
                                 [0.6, 9.0, 9.0, 0.05],
                                 [9.0, 0.95, 0.4, 9.0]])
    pruned, regrown = choose_rewiring(mask, prune_score, regrow_score, fraction=0.5)  # k = 3
    assert pruned.nonzero().tolist() == [[0, 1], [1, 2], [2, 3]]
    assert regrown.nonzero().tolist() == [[0, 3], [1, 0], [2, 1]]
    # eligibility restricts both sides
    eligible = torch.ones_like(mask, dtype=torch.bool)
    eligible[0] = False
    pruned, regrown = choose_rewiring(mask, prune_score, regrow_score, 0.5, eligible)  # k = 2
    assert pruned.nonzero().tolist() == [[1, 2], [2, 3]]
    assert regrown.nonzero().tolist() == [[1, 0], [2, 1]]


def test_pearson_from_moments_matches_corrcoef():
    torch.manual_seed(0)
    pre, post = torch.randn(50, 4), torch.randn(50, 3)
    rho = pearson_from_moments(post.t() @ pre / 50, post.mean(0), post.pow(2).mean(0),
                               pre.mean(0), pre.pow(2).mean(0))
    full = torch.corrcoef(torch.cat([post, pre], 1).t())
    torch.testing.assert_close(rho, full[:3, 3:], atol=1e-5, rtol=1e-4)


def hand_made_layer(**dst):
    """in 6 → out 2, identity activation, no bias; unit 0 reads inputs 0 (w 1) and 1 (w 0.01),
    unit 1 reads inputs 2 (w 1) and 3 (w −0.02)."""
    mask = torch.zeros(2, 6)
    mask[0, [0, 1]] = 1
    mask[1, [2, 3]] = 1
    net = G2G(Task((6,), 2), hidden=[2], activation="identity", bias=False, masks=[mask], head=False,
              dst={"enabled": True, "every": 1, "prune_fraction": 0.5, **dst})
    with torch.no_grad():
        w = net.blocks[0].linear.weight
        w.zero_()
        w[0, 0], w[0, 1], w[1, 2], w[1, 3] = 1.0, 0.01, 1.0, -0.02
    return net


def hand_made_batch(seed: int) -> torch.Tensor:
    """Inputs 0–3 independent; input 4 copies input 0 (so tracks unit 0), input 5 is −input 2
    (anti-correlated with unit 1)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(64, 6, generator=g)
    h[:, 4] = h[:, 0]
    h[:, 5] = -h[:, 2]
    return h


def test_regrowth_picks_the_highest_correlation_inactive_edges():
    net = hand_made_layer(prune="magnitude", regrow="correlation", ema=0.9)
    block = net.blocks[0]
    net.train()
    batches = [hand_made_batch(s) for s in range(5)]
    for h in batches:
        net(h)
    # the EMA equals the moments of the batches weighted 0.9^(age), bias-corrected
    weights = torch.tensor([0.9 ** (4 - t) for t in range(5)]) * 0.1
    weights = weights / weights.sum()
    pre = torch.stack(batches)
    post = pre @ (block.linear.weight.detach() * block.mask).t()
    cross = sum(w * p.t() @ x / 64 for w, p, x in zip(weights, post, pre, strict=True))
    rho = pearson_from_moments(cross, (weights[:, None] * post.mean(1)).sum(0),
                               (weights[:, None] * post.pow(2).mean(1)).sum(0),
                               (weights[:, None] * pre.mean(1)).sum(0),
                               (weights[:, None] * pre.pow(2).mean(1)).sum(0))
    torch.testing.assert_close(block.correlation(), rho, atol=1e-5, rtol=1e-4)
    before = block.mask.clone()
    with torch.no_grad():
        block.linear.weight[block.mask == 0] = 0.0
    assert net.structural_step(1) is True
    after = block.mask
    pruned = (before == 1) & (after == 0)
    regrown = (before == 0) & (after == 1)
    assert pruned.nonzero().tolist() == [[0, 1], [1, 3]]  # the two smallest |w|
    assert regrown.nonzero().tolist() == [[0, 4], [1, 5]]  # |ρ| ≈ 1: copy and negated copy
    top = rho.abs().masked_fill(before == 1, -1.0).flatten().topk(2).indices
    assert sorted(top.tolist()) == sorted((regrown.flatten().nonzero().flatten()).tolist())
    w = block.linear.weight.detach()
    assert float(w[0, 4]) == 0.0 and float(w[1, 5]) == 0.0  # regrown weights start at zero
    assert float(w[0, 1]) == 0.0 and float(w[1, 3]) == 0.0  # pruned weights are zeroed
    assert int(after.sum()) == int(before.sum())


def test_correlation_pruning_drops_the_least_correlated_edges():
    net = hand_made_layer(prune="correlation", regrow="random", ema=0.5)
    net.train()
    net(hand_made_batch(0))
    block = net.blocks[0]
    before = block.mask.clone()
    net.rewire()
    pruned = (before == 1) & (block.mask == 0)
    # unit 0 ≈ input 0 (ρ ≈ 1), input 1 nearly uncorrelated with it; likewise unit 1 / input 3
    assert pruned.nonzero().tolist() == [[0, 1], [1, 3]]
    assert int(block.mask.sum()) == 4


def test_scope_between_keeps_the_within_ensemble_blocks():
    torch.manual_seed(0)
    net = G2G(Task((64,), 10), hidden=[64], groups=4, p_between=0.3,
              dst={"enabled": True, "every": 1, "prune": "random", "regrow": "random", "scope": "between"})
    block = net.blocks[0]
    within = within_mask(block.in_groups, block.out_groups).bool()
    count = int(block.mask.sum())
    for step in range(1, 6):
        assert net.structural_step(step)
        assert bool((block.mask[within] == 1).all())
        assert int(block.mask.sum()) == count
    assert net.rewirings == 5


def test_dst_schedule_and_checkpointed_state():
    torch.manual_seed(0)
    task = Task((32,), 4)
    dst = {"enabled": True, "every": 3, "prune": "random", "regrow": "random"}
    net = G2G(task, hidden=[32], groups=4, dst=dst, mask_seed=5)
    assert [net.structural_step(s) for s in range(1, 7)] == [False, False, True, False, False, True]
    twin = G2G(task, hidden=[32], groups=4, dst=dst, mask_seed=9)
    twin.load_state_dict(net.state_dict())
    assert twin.rewirings == 2 and torch.equal(twin.masks()[0], net.masks()[0])
    net.rewire()
    twin.rewire()  # the same random choices after a reload
    assert torch.equal(twin.masks()[0], net.masks()[0])
    assert not G2G(task, hidden=[32], groups=4).structural_step(100)  # DST off by default


@pytest.mark.parametrize("learner,prune,regrow,optimizer", [
    ("backprop", "magnitude", "correlation", "adam"),
    ("backprop", "random", "random", "adamw"),
    ("mono_forward", "correlation", "correlation", "adam"),
    ("forward_forward", "magnitude", "correlation", "adam"),
])
def test_engine_keeps_edge_count_and_zero_moments_of_masked_weights(tmp_path: Path, learner, prune,
                                                                    regrow, optimizer):
    cfg = bioplaus.compose([
        f"learner={learner}", "circuit=g2g", "circuit.hidden=[64,64]", "trainer.epochs=3",
        "circuit.dst.enabled=true", "circuit.dst.every=5", f"circuit.dst.prune={prune}",
        f"circuit.dst.regrow={regrow}", f"learner.optimizer={optimizer}", "learner.weight_decay=0.01",
        "trainer.checkpoint=false", f"paths.runs={tmp_path}", "device=cpu"])
    data, circuit, learn = build(cfg)
    initial = [m.clone() for m in circuit.masks()]
    counts = circuit.active_edges()
    (tmp_path / "run").mkdir()
    summary = _Loop(cfg, tmp_path / "run", (data, circuit, learn), quiet=True, resume=False).run()
    assert circuit.rewirings == 3 * (data.train_x.shape[0] // 64) // 5
    assert circuit.active_edges() == counts
    assert any(not torch.equal(a, b) for a, b in zip(initial, circuit.masks(), strict=True))
    assert abs(summary["circuit_sparsity"] - EXPECTED_SPARSITY) < 0.02
    params = dict(circuit.named_parameters())
    states = [s for opt in learn.optimizers.values() for p, s in opt.state.items()]
    assert states
    for name, mask in circuit.parameter_masks().items():
        weight = params[name]
        off = mask == 0
        assert bool((weight.detach()[off] == 0).all())
        found = False
        for opt in learn.optimizers.values():
            if weight in opt.state:
                found = True
                for key in ("exp_avg", "exp_avg_sq"):
                    assert bool((opt.state[weight][key][off] == 0).all()), key
        assert found


# -- configuration -----------------------------------------------------------------------------


def test_config_keys_match_the_declaration():
    from omegaconf import OmegaConf

    cfg = bioplaus.compose(["learner=backprop", "circuit=g2g", "seed=4"])
    keys = {k for k in cfg.circuit if k != "name"}
    assert keys == set(G2G.Options.fields())
    options = OmegaConf.to_container(cfg.circuit, resolve=True)
    assert options["mask_seed"] == 4 and options["hidden"] == [256, 256]  # learner yaml's widths
    assert set(options["dst"]) == set(G2G(Task((8,), 2), hidden=[8]).dst)


def test_explicit_masks_from_a_file(tmp_path: Path):
    masks = [torch.ones(16, 64).tril(), (torch.rand(8, 16) < 0.5).float()]
    path = tmp_path / "masks.pt"
    torch.save(masks, path)
    net = G2G(Task((64,), 10), hidden=[16, 8], masks=str(path))
    for got, want in zip(net.masks(), masks, strict=True):
        assert torch.equal(got, want)
    assert bool((net.blocks[0].linear.weight[masks[0] == 0] == 0).all())
    cfg = bioplaus.compose(["learner=backprop", "circuit=g2g", "circuit.hidden=[16,8]",
                            f"circuit.masks={path}"])
    _, circuit, _ = build(cfg)
    assert torch.equal(circuit.masks()[1], masks[1])
    with pytest.raises(UsageError, match="shape"):
        G2G(Task((64,), 10), hidden=[16, 9], masks=masks)
    with pytest.raises(UsageError, match="no file"):
        G2G(Task((64,), 10), hidden=[16, 8], masks=str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("kw,match", [
    ({"grouping": "blocks"}, "grouping"),
    ({"path": "sparse"}, "path"),
    ({"p_between": 1.5}, "p_between"),
    ({"groups": 0}, "groups"),
    ({"hidden": []}, "hidden"),
    ({"init": "zeros"}, "init"),
    ({"dst": {"prune": "oldest"}}, "dst.prune"),
    ({"dst": {"regrow": "magnitude"}}, "dst.regrow"),
    ({"dst": {"every": 0}}, "dst.every"),
    ({"dst": {"prune_fraction": 1.0}}, "prune_fraction"),
    ({"dst": {"often": 3}}, "no option .often."),
])
def test_bad_options_are_usage_errors(kw, match):
    with pytest.raises(UsageError, match=match):
        G2G(Task((64,), 10), **{"hidden": [32], **kw})


# -- learning ----------------------------------------------------------------------------------


# narrow hidden layers and few epochs: random frozen ensembles read out linearly stay far below
# trained ones (the learner's other defaults). (learner, overrides, absolute floor, margin over the
# frozen-hidden accuracy; None: the hidden layers' own local losses must fall by 40 % instead)
G2G_RUNS = {
    "backprop": (["circuit.hidden=[32,32]", "trainer.epochs=10"], 0.75, 0.2),
    "mono_forward": (["circuit.hidden=[32,32]", "trainer.epochs=10"], 0.85, 0.2),
    "forward_forward": (["circuit.hidden=[64,64]", "trainer.epochs=20"], 0.25, 0.15),
    "counter_current": (["circuit.hidden=[32,32]", "trainer.epochs=10"], 0.9, 0.05),
    "tpsgd": (["trainer.epochs=10"], 0.9, None),
}


@pytest.mark.parametrize("learner", sorted(G2G_RUNS))
def test_learns_digits_above_its_frozen_ensembles(tmp_path: Path, learner, untrained):
    overrides, floor, margin = G2G_RUNS[learner]
    run = [f"learner={learner}", "circuit=g2g", "device=cpu", *overrides]
    cfg = bioplaus.compose([*run, f"paths.runs={tmp_path}", "trainer.checkpoint=false"])
    summary = bioplaus.train(cfg, quiet=True)
    assert summary["status"] == "completed" and summary["circuit"] == "g2g"
    assert summary["test_accuracy"] >= floor, summary["test_accuracy"]
    # the sparsity of the weights the trained net's forward pass read
    sparsity = summary["circuit_sparsity"]
    assert math.isclose(sparsity, EXPECTED_SPARSITY, abs_tol=0.03), sparsity
    if margin is not None:
        frozen = untrained.run(run)
        assert_above(f"{learner} g2g", summary["test_accuracy"], frozen["test_accuracy"], margin)
    else:  # tpsgd: its readout barely beats frozen ensembles here; its hidden targets are learned
        # (frozen layers keep their local losses where they start)
        epochs = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").open()]
        for key in ("train_loss_l1", "train_loss_l2"):
            assert epochs[-1][key] <= 0.6 * epochs[0][key], (key, epochs[0][key], epochs[-1][key])
    assert math.isclose(summary["circuit_sparsity"], EXPECTED_SPARSITY, abs_tol=0.01)
    assert summary["circuit"] == "g2g"


def test_resumed_dst_run_ends_where_the_uninterrupted_run_ends(tmp_path: Path):
    run = ["learner=backprop", "circuit=g2g", "circuit.hidden=[64,64]", "seed=2", "device=cpu",
           "circuit.dst.enabled=true", "circuit.dst.every=7", "circuit.dst.prune=random",
           "circuit.dst.regrow=correlation"]
    full = bioplaus.train(bioplaus.compose([*run, "trainer.epochs=4"]), run_dir=tmp_path / "full",
                          quiet=True)
    bioplaus.train(bioplaus.compose([*run, "trainer.epochs=2"]), run_dir=tmp_path / "half", quiet=True)
    resumed = resume(tmp_path / "half", ["trainer.epochs=4"], quiet=True)
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert resumed["circuit_rewirings"] == full["circuit_rewirings"] > 0
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)["learner"]
    b = torch.load(tmp_path / "half" / "checkpoints" / "last.pt", weights_only=False)["learner"]
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
