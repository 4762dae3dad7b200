"""Mutation check: break a rule on purpose and see that the tests notice.

Each mutation rewrites one function's source text in memory (never on disk) and runs the tests
meant to catch it; a mutation that no test fails is reported as surviving. Also a pytest plugin:
``MUTATION=NAME python -m pytest -p tests.mutations ...`` runs any tests under mutation NAME.

    python -m tests.mutations                 # every mutation, its tests; exit 1 if one survives
    python -m tests.mutations NAME [NAME ...]

``frozen_hidden`` is the frozen-hidden-layer mutation of ``tests/floors.py`` applied to every
learner the tests train (`bioplaus.train`/`build` and `tests.helpers.fit`); the learning tests'
figures next to their floors come from ``python benchmarks/floors.py``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import textwrap
from typing import Any

#: name -> (module, function qualname, source text, replacement, pytest arguments of its tests)
MUTATIONS: dict[str, tuple[str, str, str, str, list[str]]] = {
    "ff_true_label_on_10pct_of_negatives": (
        "bioplaus.learners.forward_forward", "random_wrong_labels",
        "return (y + shift) % num_classes",
        "shift = torch.where(torch.rand(y.shape, device=y.device) < 0.1, torch.zeros_like(shift), shift)\n"
        "    return (y + shift) % num_classes",
        ["tests/learners/test_forward_forward.py", "-k", "negative or never"]),
    "noprop_a_and_b_swapped_in_inference": (
        "bioplaus.learners.noprop", "NoProp.infer",
        "z = self.coef_a[t] * mixture + self.coef_b[t] * z + noise",
        "z = self.coef_b[t] * mixture + self.coef_a[t] * z + noise",
        ["tests/learners/test_noprop.py", "-k", "not digits and not capture"]),
    "noprop_block_weight_of_the_next_block": (
        "bioplaus.learners.noprop", "NoProp.dt_losses",
        "self.block_weights[t - 1] *", "self.block_weights[t % self.blocks_count] *",
        ["tests/learners/test_noprop.py", "-k", "not digits and not capture"]),
    "noprop_block_term_unweighted": (
        "bioplaus.learners.noprop", "NoProp.dt_losses", "self.block_weights[t - 1] *", "1.0 *",
        ["tests/learners/test_noprop.py", "-k", "not digits and not capture"]),
    "resume_without_the_torch_rng_state": (
        "bioplaus.checkpoint", "set_rng_state", 'torch.set_rng_state(state["torch"])', "pass",
        ["tests/engine/test_resume.py", "-k", "bit_identical"]),
    "g2g_mask_not_applied_in_forward": (
        "bioplaus.circuits.g2g", "MaskedLinear.forward",
        "F.linear(h, self.weight * self.mask.to(self.weight.dtype), self.bias)",
        "F.linear(h, self.weight, self.bias)",
        ["tests/circuits/test_g2g.py", "-m", "not slow and not floors"]),
    "mono_forward_scores_scaled_by_depth": (
        "bioplaus.learners.mono_forward", "MonoForward.block_scores",
        "out.append(class_scores(x, projection))", "out.append(class_scores(x, projection) * (1 + len(out)))",
        ["tests/learners/test_mono_forward.py", "-k", "readouts"]),
    "local_aux_gradient_crosses_modules": (
        "bioplaus.learners.local_aux", "LocalAux.train_step",
        "h = self.run_module(k, h.detach())", "h = self.run_module(k, h)",
        ["tests/learners/test_local_aux.py", "-k", "isolates"]),
}
#: the frozen-hidden-layer mutation runs the learning tests of the default suite
FROZEN = ["tests", "-m", "floors and not slow"]


def _patch(module_name: str, qualname: str, old: str, new: str) -> None:
    module = importlib.import_module(module_name)
    owner: Any = module
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    source = textwrap.dedent(inspect.getsource(getattr(owner, name)))
    if old not in source:
        raise RuntimeError(f"mutation target changed: {qualname} no longer holds {old!r}; update "
                           f"tests/mutations.py")
    namespace: dict[str, Any] = {}
    exec(compile(source.replace(old, new), f"<mutant {qualname}>", "exec"), module.__dict__, namespace)
    setattr(owner, name, namespace[name])


def _freeze_every_learner() -> None:
    import tests.helpers as helpers
    from bioplaus import engine
    from tests.floors import freeze_hidden

    build, fit = engine._build, helpers.fit

    def frozen_build(cfg: Any, data: Any) -> Any:
        data, circuit, learner = build(cfg, data)
        return data, circuit, freeze_hidden(learner)

    engine._build = frozen_build
    helpers.fit = lambda learner, *args, **kwargs: fit(freeze_hidden(learner), *args, **kwargs)


def pytest_configure(config: Any) -> None:
    """Apply $MUTATION (pytest plugin hook; before the test modules are imported)."""
    name = os.environ.get("MUTATION")
    if not name:
        return
    if name == "frozen_hidden":
        _freeze_every_learner()
    else:
        module, qualname, old, new, _ = MUTATIONS[name]
        _patch(module, qualname, old, new)


def run(name: str) -> list[str]:
    """The tests that fail under mutation ``name``."""
    args = FROZEN if name == "frozen_hidden" else MUTATIONS[name][4]
    env = {**os.environ, "MUTATION": name, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
                             "tests.mutations", "-rf", *args], env=env, capture_output=True, text=True)
    return [line.split(" - ")[0].removeprefix("FAILED ") for line in result.stdout.splitlines()
            if line.startswith("FAILED ")]


def main(names: list[str]) -> int:
    if any(n in ("-h", "--help") for n in names):
        print(__doc__.strip())
        print(f"\nMutations: {', '.join([*MUTATIONS, 'frozen_hidden'])}.\nEach line lists the tests that "
              "failed under the mutation (failing tests mean it was caught); exit 1 if one survives.")
        return 0
    unknown = [n for n in names if n not in MUTATIONS and n != "frozen_hidden"]
    if unknown:
        print(f"unknown mutation(s) {', '.join(unknown)}; known: {', '.join([*MUTATIONS, 'frozen_hidden'])}",
              file=sys.stderr)
        return 2
    survivors = []
    for name in names or [*MUTATIONS, "frozen_hidden"]:
        failed = run(name)
        print(f"{name}: {len(failed)} failing test(s)" + "".join(f"\n    {t}" for t in failed), flush=True)
        if not failed:
            survivors.append(name)
    if survivors:
        print(f"SURVIVING: {', '.join(survivors)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
