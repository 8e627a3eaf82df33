"""moft: multi-objective fine-tuning with Pareto fronts as the product."""

__version__ = "0.1.0"
