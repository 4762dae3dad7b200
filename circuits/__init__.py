"""Built-in circuits; importing this package registers them."""

from bioplaus.circuits import cnn, mlp

__all__ = ["cnn", "mlp"]
