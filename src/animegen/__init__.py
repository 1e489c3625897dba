"""animegen: train, sample, evaluate and compare generative models of anime faces."""

__version__ = "0.1.0"
