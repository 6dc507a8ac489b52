"""Offline tasks: datasets held as tensors and the models that ask the registry for their norms."""

from normbench.tasks.data import Dataset, load_dataset
from normbench.tasks.models import ModelConfigError, NormLayers, build_model

__all__ = ["Dataset", "ModelConfigError", "NormLayers", "build_model", "load_dataset"]
