"""The step runner: eager on CPU, CUDA-graph captured on CUDA.

On CUDA the runner runs the first ``warmup_steps`` real training steps eagerly on a side stream
(allocator and autograd warm-up), then captures one ``learner.train_step`` into a CUDA graph and
replays it for every later batch, copying each batch into the graph's static input tensors. A
learner whose step structure depends on host-side state (a greedy stage, a new mask pattern)
returns a different `Learner.capture_key` after ``on_epoch_end``; the runner then captures anew.
If capture fails the runner says why and runs eagerly (``runtime.cuda_graphs=on`` makes that an
error instead). `StepRunner.captured` says whether the steps really ran as graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bioplaus.core import Learner
from bioplaus.errors import RunFailed


class StepRunner:
    def __init__(self, learner: Learner, device: torch.device, mode: str = "auto",
                 warmup_steps: int = 3, log: Callable[[str], None] = print):
        self.learner = learner
        self.mode = mode
        self.warmup_steps = max(1, int(warmup_steps))
        self.log = log
        self.graphed = device.type == "cuda" and mode != "off"
        self.captures = 0  # graphs captured so far (a new one whenever the step's key changes)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._key: Any = None
        self._steps_since_capture = 0
        self._static: tuple[Tensor, Tensor] | None = None
        self._static_out: dict[str, Tensor] = {}
        self._side_stream: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        """True when at least one graph was captured and no capture fell back to eager steps."""
        return self.graphed and self.captures > 0

    def step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if not self.graphed:
            return self.learner.train_step(x, y)
        key = (self.learner.capture_key(), tuple(x.shape), tuple(y.shape))
        if key != self._key:
            self._graph, self._key, self._steps_since_capture = None, key, 0
        if self._graph is None:
            if self._steps_since_capture < self.warmup_steps:
                self._steps_since_capture += 1
                return self._eager_on_side_stream(x, y)
            self._capture(x, y)  # records the step and replays it once for this batch
            if self._graph is None:  # capture failed, fell back to eager
                return self.learner.train_step(x, y)
            return self._static_out
        static_x, static_y = self._static  # type: ignore[misc]
        static_x.copy_(x)
        static_y.copy_(y)
        self._graph.replay()  # type: ignore[union-attr]
        return self._static_out

    def _eager_on_side_stream(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream()
        self._side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._side_stream):
            out = self.learner.train_step(x, y)
        torch.cuda.current_stream().wait_stream(self._side_stream)
        return out

    def _capture(self, x: Tensor, y: Tensor) -> None:
        static_x, static_y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                out = self.learner.train_step(static_x, static_y)
        except Exception as e:  # capture of an unsupported op
            reason = " ".join(str(e).split())[:300]
            if self.mode == "on":
                raise RunFailed(
                    f"CUDA graph capture of {self.learner.name}.train_step failed: {reason}") from e
            self.log(f"CUDA graph capture failed ({reason}); running train_step eagerly.")
            self.graphed = False
            return
        self._graph, self._static, self._static_out = graph, (static_x, static_y), out
        self.captures += 1
        # the captured step has only been recorded: replay it once for this batch
        graph.replay()
