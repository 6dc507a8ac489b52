"""Tasks: the task registry (:mod:`normbench.tasks.registry`), the built-in tasks (classification,
sequence, gan), offline datasets held as tensors, and the models that ask the norm registry for their
norms."""

from normbench.tasks.data import load_dataset
from normbench.tasks.dataset import Dataset
from normbench.tasks.models import ModelConfigError, build_classifier
from normbench.tasks.norm_layers import NormLayers

__all__ = ["Dataset", "ModelConfigError", "NormLayers", "build_classifier", "load_dataset"]
