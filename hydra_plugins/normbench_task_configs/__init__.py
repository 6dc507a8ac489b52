"""Task plugins' presets on Hydra's config search path (see :mod:`.task_configs`)."""
