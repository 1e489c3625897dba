"""Image-quality metrics: FID, KID and precision/recall on TF-FID Inception features,
a registry of metrics by name, and a cache of real-data features. See docs/metrics.md."""

from animegen.metrics.evaluate import compare_sources, evaluate_generator, reference_features
from animegen.metrics.inception import InceptionV3
from animegen.metrics.catalog import Metric, lookup, registry

__all__ = ["compare_sources", "evaluate_generator", "reference_features", "InceptionV3", "Metric", "lookup", "registry"]
