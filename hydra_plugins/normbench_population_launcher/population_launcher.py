"""``hydra/launcher=population``: see :class:`normbench.population.launcher.PopulationLauncher`."""

from normbench.population.launcher import PopulationLauncher as _PopulationLauncher


class PopulationLauncher(_PopulationLauncher):
    """Trains the jobs of a multirun as vectorized populations of runs that differ only in values."""
