"""Offline tasks: datasets held as tensors and the models that ask the registry for their norms."""

from normbench.tasks.data import load_dataset
from normbench.tasks.dataset import Dataset
from normbench.tasks.models import ModelConfigError, build_model
from normbench.tasks.norm_layers import NormLayers

__all__ = ["Dataset", "ModelConfigError", "NormLayers", "build_model", "load_dataset"]
