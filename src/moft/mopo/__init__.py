"""MOPO (SPEC 5.5): multi-objective preference optimisation as a constrained, KL-regularised
problem; :mod:`moft.mopo.tabular` holds the method on tables, :mod:`moft.mopo.synthetic` the
canonical bandits and their exact optima, :mod:`moft.mopo.stages` the synthetic track."""
