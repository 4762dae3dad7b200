"""Built-in learning rules; importing this package registers them."""

from bioplaus.learners import backprop, forward_forward, mono_forward

__all__ = ["backprop", "forward_forward", "mono_forward"]
