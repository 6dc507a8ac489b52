"""normbench's Hydra sweeper. Hydra loads plugins only from the ``hydra_plugins`` namespace package,
so the class lives in :mod:`normbench.sweep` and is named here."""
