"""Which config keys join a run's identity late: from the schema (no torch, no Hydra), so that the
report (``normbench.report``) can read records without importing the training stack."""

from normbench.schema import later_keys

# Keys added after records existed, left out of the identity while at this value: the earlier runs
# behaved exactly so, and keep their hashes. The schema's marks (normbench.schema.added) give them; a
# plugin's options are not in the schema (plugins import torch), so theirs are listed here.
PLUGIN_LATER_KEYS = {
    "norm.positions": 0,  # batchnorm pooled over positions, as before the option existed
}
LATER_KEYS = {**later_keys(), **PLUGIN_LATER_KEYS}
