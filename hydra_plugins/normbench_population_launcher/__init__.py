"""normbench's population launcher. Hydra loads plugins only from the ``hydra_plugins`` namespace
package, so the class lives in :mod:`normbench.population.launcher` and is named here."""
