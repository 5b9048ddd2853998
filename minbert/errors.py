"""Error types raised for problems a user can cause: bad checkpoints and bad paths."""


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, truncated, unsafe or does not match the model."""
