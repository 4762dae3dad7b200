"""Built-in circuits; importing this package registers them."""

from bioplaus.circuits import cnn, g2g, hopfield, mlp, noprop, rnn, snn

__all__ = ["cnn", "g2g", "hopfield", "mlp", "noprop", "rnn", "snn"]
