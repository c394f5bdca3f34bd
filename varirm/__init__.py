"""varirm: reward models that are good teachers for RLHF (high reward variance under the policy)."""

__version__ = "0.1.0"
