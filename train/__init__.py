"""Training side of the project: data, configs, loop, checkpoints (see train.py for the flow)."""
