"""The task-free run: the epoch loop, seeds in lock-step and TensorBoard events."""
