"""Small helpers the butler's bulk paths use that its clients (planners, executors) use too."""

from ._gc import gc_paused

__all__ = ["gc_paused"]
