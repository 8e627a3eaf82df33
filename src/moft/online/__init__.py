"""Online multi-objective alignment of LMs (SPEC 5.4): MO-ODPO and its baselines.

- :mod:`moft.online.prefix`: the objective-weight instruction ``p(w)`` and weight sampling;
- :mod:`moft.online.rewards`: the objectives' normalised rewards behind one scorer;
- :mod:`moft.online.rollout`: settings, one rollout (condition, sample, score) and the loop;
- :mod:`moft.online.mo_odpo`: MO-ODPO (Algorithm 1);
- :mod:`moft.online.baselines`: ODPO soups and P-MORL;
- :mod:`moft.online.front`: the prompt-conditioned front, save/load, and ``steer``.
"""
