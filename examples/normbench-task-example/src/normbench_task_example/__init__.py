"""An example normbench task plugin: :mod:`normbench_task_example.autoencoder`, and its preset in conf/."""
