"""Which config keys join a run's identity late: data only (no torch, no Hydra), so that the report
(``normbench.report``) can read records without importing the training stack."""

# Keys added after records existed, left out of the identity while at this value: the earlier runs
# behaved exactly so, and keep their hashes.
LATER_KEYS = {
    "task.augment": "none",
    "task.model.name": "",
    "task.model.small_input": True,
    "task.model.cell": "lstm",
    "task.model.shared_stats": False,
    "task.model.embed": 0,
    "task.model.norm_gain": 1.0,
    "task.model.init_scale": 1.0,
    "task.model.g_norm": "",
    "task.model.d_norm": "",
    "task.model.d_batches": "separate",
    "task.model.latent": 32,
    "task.metric": "test_error",
    "task.lower_is_better": True,
    "data.val_size": 0,  # runs before the validation split trained on the whole training set
    "data.split_seed": 0,
    "data.mnist1d_samples": 5000,
    "data.mnist1d_test_samples": 0,
    "norm.positions": 0,  # batchnorm pooled over positions, as before the option existed
    "runtime.precision": "fp32",  # every fp32 run keeps the hash it had before the setting existed
}
