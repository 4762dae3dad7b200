"""Built-in circuits; importing this package registers them."""

from bioplaus.circuits import cnn, dense_hebbian, g2g, hopfield, mlp, modern_hopfield, noprop, rnn, snn

__all__ = ["cnn", "dense_hebbian", "g2g", "hopfield", "mlp", "modern_hopfield", "noprop", "rnn", "snn"]
