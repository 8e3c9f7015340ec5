"""runner: run deep-learning training jobs on rented GPUs and workstations."""

__version__ = "0.1.0"
