"""Layer-by-layer ("greedy") training stages, for rules that offer ``schedule=greedy``.

With E = ``greedy_epochs``, block l (0-based) trains during epochs [l·E, (l+1)·E) and the last
block from then on; under ``schedule=simultaneous`` every block trains every step (stage 0). A
learner mixing `GreedyStages` in counts its ``on_epoch_end`` calls in ``epochs_seen`` (checkpointed
as the module's extra state) and has the options ``schedule``, ``greedy_epochs`` and ``readout``.
"""

from __future__ import annotations

from typing import Any


class GreedyStages:
    """``stage_after``, the checkpointed epoch count and the schedule's run metrics."""

    schedule: str
    greedy_epochs: int
    readout: str
    epochs_seen: int
    circuit: Any

    def stage_after(self, epochs_seen: int) -> int:
        """Block (0-based) that trains once ``epochs_seen`` epochs are done (0 unless greedy)."""
        if self.schedule != "greedy":
            return 0
        return min(epochs_seen // self.greedy_epochs, len(self.circuit.blocks) - 1)

    def get_extra_state(self) -> Any:
        return {"epochs_seen": self.epochs_seen}

    def set_extra_state(self, state: Any) -> None:
        self.epochs_seen = int(state["epochs_seen"])

    def plan_warnings(self, epochs: int) -> list[str]:
        """A warning when ``epochs`` epochs end before the greedy schedule reaches the last block."""
        blocks = len(self.circuit.blocks)
        reached = self.stage_after(max(epochs - 1, 0)) + 1
        if self.schedule != "greedy" or reached == blocks:
            return []
        trained = "block 1" if reached == 1 else f"blocks 1-{reached}"
        idle = f"block {blocks} is" if reached + 1 == blocks else f"blocks {reached + 1}-{blocks} are"
        return [f"warning: schedule=greedy with greedy_epochs={self.greedy_epochs} trains {trained} "
                f"of {blocks} in {epochs} epochs; {idle} never trained (initial weights). The last block "
                f"starts training at epoch "
                f"{self.greedy_epochs * (blocks - 1) + 1}: set trainer.epochs to at least that."]

    def rule_metrics(self) -> dict[str, Any]:
        """The schedule and readout; under greedy, ``greedy_stage_reached``: the 1-based block that
        trained in the last epoch done, and ``greedy_stages``: how many blocks there are (a run
        whose last block never trained reads a readout on untrained layers)."""
        out: dict[str, Any] = {"schedule": self.schedule, "readout": self.readout}
        if self.schedule == "greedy":
            out["greedy_stage_reached"] = self.stage_after(max(self.epochs_seen - 1, 0)) + 1
            out["greedy_stages"] = len(self.circuit.blocks)
        return out
