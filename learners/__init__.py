"""Built-in learning rules; importing this package registers them."""

from bioplaus.learners import (
    backprop,
    counter_current,
    dcls,
    forward_forward,
    hebbian,
    hopfield,
    local_aux,
    modern_hopfield,
    mono_forward,
    noprop,
    tpsgd,
)

__all__ = ["backprop", "counter_current", "dcls", "forward_forward", "hebbian", "hopfield", "local_aux",
           "modern_hopfield",
           "mono_forward", "noprop", "tpsgd"]
