"""Population training: runs of a sweep that differ only in values (seed, learning rate, ...) trained
together as one vectorized model. :mod:`~normbench.population.grouping` says which runs can,
:mod:`~normbench.population.train` trains them, :mod:`~normbench.population.optim` steps them, and
:mod:`~normbench.population.launcher` is the Hydra launcher (``hydra/launcher=population``)."""
