"""The three roles of bioplaus: `Task`, `Circuit` and `Learner`.

A *circuit* is the structure a rule acts on: an ordered list of blocks, each mapping the previous
block's output to its own. A *learner* owns the update rule and every parameter the rule adds.
The engine composes the two and knows no specific rule.

The `train_step` contract (what makes a step capturable as a CUDA graph):

* pure tensor work on the batch's device — no ``.item()``, no host sync, no Python branch on a
  tensor's value;
* scheduled scalars (learning rate, threshold, noise) held in device tensors and changed in place
  by `on_epoch_end`;
* returns its metrics as 0-d tensors.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from bioplaus.errors import UsageError
from bioplaus.options import CircuitOptions, LearnerOptions

TaskKind = Literal["classification", "memory", "temporal"]


@dataclass(frozen=True)
class Task:
    """What a circuit and learner are asked to do.

    Attributes:
        input_shape: shape of one example, without the batch dimension (e.g. ``(1, 28, 28)``).
        num_classes: number of classes C (classification) or 0.
        kind: ``classification`` | ``memory`` | ``temporal``.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    kind: TaskKind = "classification"

    def require_classification(self, rule: str) -> None:
        """Raise `UsageError` unless this is a classification task with at least 2 classes."""
        from bioplaus.errors import UsageError

        if self.kind != "classification" or self.num_classes < 2:
            raise UsageError(f"{rule} trains classifiers: it needs a classification task with at least "
                             f"2 classes (got kind={self.kind}, classes={self.num_classes}).")

    @property
    def input_size(self) -> int:
        """Number of input features when an example is flattened."""
        size = 1
        for d in self.input_shape:
            size *= d
        return size


class Circuit(nn.Module):
    """Base class of every circuit: an ordered `blocks` list and structural state in buffers.

    ``forward(x)`` runs the blocks in order. Learners reach the layers through ``blocks`` and never
    special-case a circuit family. A circuit holds no optimizer and no loss.
    """

    name: ClassVar[str] = "circuit"
    #: the circuit's declared options (see `bioplaus.options`); subclasses declare their own
    Options: ClassVar[type[CircuitOptions]] = CircuitOptions
    #: layout of a batch of inputs: ``batch`` — (B, *input_shape); ``batch_time`` — (B, T, *features),
    #: a time axis second (spiking circuits). Data are stored, shuffled and split along dim 0 in
    #: both, so the engine batches them alike; a circuit that wants time first transposes inside.
    input_layout: ClassVar[str] = "batch"
    #: ranks of `Task.input_shape` the circuit reads, with their meaning (e.g. ``{3: "images
    #: (channels, height, width)"}``); None: any. Checked once, here.
    input_ranks: ClassVar[dict[int, str] | None] = None
    #: whether the circuit can be built without a head (``head=False``)
    headless: ClassVar[bool] = True

    def __init__(self, task: Task, *, head: bool = True, **options: Any) -> None:
        super().__init__()
        self.task = task
        self.options = type(self).Options.parse(f"circuit '{self.name}'", options)
        ranks = type(self).input_ranks
        if ranks is not None and len(task.input_shape) not in ranks:
            raise UsageError(f"circuit '{self.name}' reads {' or '.join(ranks.values())}; this data has "
                             f"examples of shape {tuple(task.input_shape)}.")
        if not head and not type(self).headless:
            raise UsageError(f"circuit '{self.name}' always ends in its output layer; it has no headless "
                             f"form.")
        #: whether the last block is a head mapping to the C classes (``head=``, which the engine
        #: takes from `Learner.circuit_head`)
        self.has_head = head
        self.blocks = nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def activations(self, x: Tensor) -> list[Tensor]:
        """Output of every block for input ``x`` (with gradient flowing end to end)."""
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    @property
    def block_widths(self) -> list[int]:
        """Flattened output size of each block."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its block widths")

    def structure_metrics(self) -> dict[str, float]:
        """Figures about the structure worth reporting in ``summary.json`` (e.g. sparsity)."""
        return {}

    @classmethod
    def describe(cls, options: CircuitOptions, input_shape: tuple[int, ...]) -> str:
        """The circuit's family and shape in a few words, for benchmark tables: the layer widths
        from the input (``mlp 64-256-256``) by default."""
        hidden = list(getattr(options, "hidden", []))
        return f"{cls.name} " + "-".join(str(w) for w in [math.prod(input_shape), *hidden])

    def on_epoch_end(self, epoch: int) -> None:
        """Host-side structural schedule at epoch ends (``epoch`` 1-based, as in
        `Learner.on_epoch_end`). Default: nothing."""

    def structural_step(self, step: int) -> bool:
        """Host-side structural update after global training step ``step`` (1-based), e.g. prune
        and regrow every N steps. Runs between steps, outside `Learner.train_step`, so a captured
        graph stays valid as long as buffers are changed in place. Return True when the structure
        changed: the engine then zeroes the optimizer state of every masked-out entry (see
        `parameter_masks`). Default: nothing, False.
        """
        return False

    def parameter_masks(self) -> dict[str, Tensor]:
        """Parameter name (as in ``named_parameters``) -> 0/1 mask of its active entries, for
        circuits with structural sparsity. Default: none."""
        return {}


class Learner(nn.Module):
    """Base class of every learning rule.

    Subclasses set ``name`` and ``circuits`` (the circuit families they can train), take
    ``(circuit, task, **cfg)`` in their constructor, and implement `train_step` and `predict`.
    Every optimizer a learner creates is registered with `add_optimizer` so that checkpoints hold
    its state.
    """

    name: ClassVar[str] = "learner"
    #: the rule's declared options (see `bioplaus.options`); subclasses declare their own
    Options: ClassVar[type[LearnerOptions]] = LearnerOptions
    #: the evaluation metric `trainer.monitor` watches by default, and its direction (max | min):
    #: best-epoch selection, early stopping and the default metric of sweep/bench/compare
    monitor: ClassVar[tuple[str, str]] = ("accuracy", "max")
    #: the `train_step` metric checked for divergence (non-finite, or growing past a factor of its
    #: first value); None: the rule has no loss (e.g. Hebbian storage) and only non-finite metrics stop it
    loss_metric: ClassVar[str | None] = "loss"
    #: circuit families this rule can train (registry names)
    circuits: ClassVar[tuple[str, ...]] = ()
    #: task kinds this rule handles
    task_kinds: ClassVar[tuple[str, ...]] = ("classification",)
    #: whether the circuit should end in a head mapping to the C classes; rules that read classes
    #: out with parameters of their own (projections, goodness) train headless circuits
    circuit_head: ClassVar[bool] = True
    #: how a data-parallel (torchrun) job feeds each global batch to this rule's `train_step`
    #: (`bioplaus.distributed`): ``shard`` — every process its equal share, gradients averaged;
    #: ``global`` — every process the whole batch, the same update computed on each (storage
    #: rules whose state grows or is a running sum)
    distributed_batches: ClassVar[Literal["shard", "global"]] = "shard"

    def __init__(self, circuit: Circuit, task: Task, **options: Any) -> None:
        super().__init__()
        self.circuit = circuit
        self.task = task
        self.options = type(self).Options.parse(f"learner '{self.name}'", options)
        if type(self).circuit_head and not circuit.has_head:
            raise UsageError(f"learner '{self.name}' trains the circuit's head to the C classes: build the "
                             f"circuit with head=True.")
        self._optimizers: dict[str, torch.optim.Optimizer] = {}

    # -- the contract -------------------------------------------------------------------------
    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """One update on one batch; returns metrics as 0-d tensors (capture-safe, see module doc)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class scores of shape (batch, C)."""
        return self.circuit(x)

    def predictions(self, x: Tensor) -> dict[str, Tensor]:
        """Every readout this rule reports, name -> class scores; the first one is the headline.

        A rule whose readouts cost extra passes may take ``readouts`` (a collection of names, ``""``
        naming the headline; None: all) and compute only those: `evaluate` asks for the ones the
        wanted metrics need."""
        return {"": self.predict(x)}

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, batch_size: int,
                 metrics: Collection[str] | None = None) -> dict[str, float]:
        """Evaluation metrics on a split (x, y), name -> value; the engine prefixes ``val_`` /
        ``test_``. Default (classifiers): ``accuracy`` of the headline readout and
        ``accuracy_<readout>`` of every named one (`predictions`). Memory and other task kinds
        override this (e.g. retrieval overlaps); `monitor` must name one of the keys.

        ``metrics``: the names the caller needs (the engine passes the monitored one after each
        epoch, None — every metric — at test). The result holds at least those; the default
        computes only the readouts they name when `predictions` takes ``readouts``.
        """
        wanted = readouts_for(metrics)
        kwargs = {"readouts": wanted} if wanted is not None and accepts(self.predictions, "readouts") else {}
        was_training = self.training
        self.eval()
        correct: dict[str, Tensor] = {}
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            for name, scores in self.predictions(xb, **kwargs).items():
                hits = (scores.argmax(dim=1) == yb).sum()
                correct[name] = correct[name] + hits if name in correct else hits
        self.train(was_training)
        n = max(1, x.shape[0])
        out: dict[str, float] = {}
        for i, (name, c) in enumerate(correct.items()):
            if i == 0 and (not kwargs or "" in wanted):  # the headline comes first
                out["accuracy"] = float(c) / n
            if name:
                out[f"accuracy_{name}"] = float(c) / n
        return out

    def on_epoch_end(self, epoch: int) -> None:
        """Host-side schedule changes after each epoch (lr, σ, θ, pruning). Default: nothing.

        ``epoch`` is 1-based: the number of the epoch just completed, as the engine counts
        (``1`` after the first epoch; a resumed run continues the count). Every caller — the
        engine, tests, a loop of your own — passes it so.
        """

    #: the learner options that make up its own learning-rate schedule (named in messages)
    lr_schedule_keys: ClassVar[str] = ""

    @classmethod
    def schedules_lr(cls, options: LearnerOptions) -> bool:
        """Whether these options make the learner change its own learning rate in `on_epoch_end`.

        One owner per schedule: the engine refuses ``trainer.lr_schedule`` other than ``constant``
        for such a configuration (exit 2), so that exactly one place sets the rate. Default: False.
        """
        return False

    def capture_key(self) -> Any:
        """Host-side state that changes what `train_step` computes (e.g. a greedy stage).

        The CUDA-graph runner captures a new graph whenever this value changes. Default: None.
        """
        return None

    def rule_metrics(self) -> dict[str, Any]:
        """Rule-specific figures for ``summary.json``."""
        return {}

    def plan_warnings(self, epochs: int) -> list[str]:
        """Warnings about a run of ``epochs`` epochs under these options, logged when it starts
        (e.g. a layer-by-layer schedule that never reaches its last layer). Default: none."""
        return []

    def write_figures(self, run_dir: Path, data: Any = None) -> list[Path]:
        """Draw rule-specific pictures (receptive fields, rasters, recalled patterns) into
        ``run_dir`` as PNG files when a run ends, beside the engine's ``curves.png``; skipped with
        ``plots=false``. ``data`` is the run's `DataSplits` (e.g. to draw a test example). Import
        matplotlib inside (use `bioplaus.plots.new_figure` and `bioplaus.plots.save_figure`, which
        use the Agg backend). A failure is logged and does not fail the run. Returns the files
        written. Default: none."""
        return []

    def report(self, run_dir: Any, summary: dict[str, Any]) -> dict[str, Any]:
        """At the end of a completed run: draw the rule's figures into ``run_dir`` (its
        ``metrics.jsonl`` holds every epoch) and return entries to add to ``summary.json``.
        Default: nothing."""
        return {}

    @classmethod
    def supports(cls, circuit_name: str) -> bool:
        """Whether this rule can train circuits of family ``circuit_name``."""
        return circuit_name in cls.circuits

    # -- optimizers -----------------------------------------------------------------------------
    def add_optimizer(self, name: str, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        self._optimizers[name] = optimizer
        return optimizer

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def optimizer_state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self._optimizers.items()}

    def load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        for name, opt in self._optimizers.items():
            opt.load_state_dict(state[name])


@dataclass
class StepMetrics:
    """Running sums of a step's 0-d metric tensors, kept on the device until an epoch ends."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    count: int = 0

    def add(self, metrics: dict[str, Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            if key in self.sums:
                self.sums[key] += value
            else:
                self.sums[key] = value.clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {key: float(value) / self.count for key, value in self.sums.items()}


def readouts_for(metrics: Collection[str] | None) -> set[str] | None:
    """Readout names (``""``: the headline) the classification metrics ``metrics`` need, or None
    (every readout) for None or a metric that is not ``accuracy`` / ``accuracy_<readout>``."""
    if metrics is None:
        return None
    names: set[str] = set()
    for metric in metrics:
        if metric == "accuracy":
            names.add("")
        elif metric.startswith("accuracy_"):
            names.add(metric[len("accuracy_"):])
        else:
            return None
    return names


def accepts(method: Any, keyword: str) -> bool:
    """Whether ``method`` takes the keyword argument ``keyword`` (an override may predate it)."""
    try:
        return keyword in inspect.signature(method).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def evaluate_learner(learner: Learner, x: Tensor, y: Tensor, batch_size: int,
                     metrics: Collection[str] | None = None) -> dict[str, float]:
    """``learner.evaluate`` asked for ``metrics`` where its `Learner.evaluate` takes them (every
    metric otherwise)."""
    if metrics is not None and accepts(learner.evaluate, "metrics"):
        return learner.evaluate(x, y, batch_size, metrics=metrics)
    return learner.evaluate(x, y, batch_size)
