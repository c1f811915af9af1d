"""The training runner shared by the tune and train stages (and usable on its own).

- :mod:`bench.training.runs`: one run's inputs (model, registry optimizer, seeded minibatches),
  its :class:`RunSettings`, the RNG streams (:func:`stream_seed`) and torch's set-up;
- :mod:`bench.training.evaluation`: the end-of-epoch evaluation;
- :mod:`bench.training.plateau`: the plateau rule halving λ1 (:class:`Plateau`);
- :mod:`bench.training.loop`: the loop, as a :class:`LoopState` plus those policies, with
  resumable checkpoints (:func:`run_training`);
- :mod:`bench.training.cells`: a train run (problem, optimizer, seed) → its run directory, and
  the train stage's cell (problem, optimizer) over its seeds;
- :mod:`bench.training.workers`: a cell's seeds (or grid points) in ``runtime.workers`` processes;
- :mod:`bench.training.tuning`: a tune cell (problem, optimizer) → its grid search file.
"""
