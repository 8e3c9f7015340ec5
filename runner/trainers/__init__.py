"""Reference trainers that run inside a job's training process (they need torch).

``franka_wm`` is the ``embedded`` profile of the ``franka_cube_stack`` job: a
compact DINO-WM-shaped world model trained with accelerate on the franka
dataset layout, small enough to train on a CPU with no download and no account.
Run it with ``python -m runner.trainers.franka_wm key=value ...``.
"""
