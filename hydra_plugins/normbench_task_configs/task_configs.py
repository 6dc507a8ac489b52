"""Config presets of installed task plugins: for each package that registers a task through the
``normbench.tasks`` entry-point group and holds a ``conf`` sub-package, ``pkg://PACKAGE.conf`` joins
Hydra's search path, so its ``conf/task/NAME.yaml`` is ``task=NAME`` (normbench's own presets come
first and win a clash)."""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ENTRY_POINT_GROUP = "normbench.tasks"  # normbench.tasks.registry.ENTRY_POINT_GROUP, without importing torch


def task_config_packages() -> list[str]:
    """``PACKAGE.conf`` of every task plugin's top-level package that has one, in entry-point order."""
    found: list[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        package = f"{ep.value.split(':')[0].split('.')[0]}.conf"
        try:
            exists = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a broken plugin package: the registry reports it
            exists = False
        if exists and package not in found:
            found.append(package)
    return found


class NormbenchTaskConfigs(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for package in task_config_packages():
            search_path.append(provider=f"normbench-task-{package}", path=f"pkg://{package}")
