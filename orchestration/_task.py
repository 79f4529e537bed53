"""Tasks: a config, declared connections and a ``run`` that maps Python objects to objects.

The framework does all butler I/O: ``run`` receives the inputs by connection name and returns
the outputs by connection name, so a task is testable without a repository.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from ._connections import Connection, InitOutput, Input, Output, PrerequisiteInput

__all__ = ["NoWorkFound", "Task", "config_digest", "config_to_dict"]


class NoWorkFound(LookupError):
    """Raised by ``run`` when a quantum has nothing to do (e.g. a coadd flavor selects no input).

    The executor records the quantum as done with no outputs (not as a failure); downstream
    quanta that needed its outputs are blocked.
    """


def config_to_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "model_dump"):
        dumped: dict[str, Any] = config.model_dump()
        return dumped
    raise TypeError(f"task configs must be dataclasses or pydantic models, got {type(config).__name__}")


def config_digest(config: Any) -> str:
    """A stable digest of a config: the same values give the same digest in any process."""
    text = json.dumps(config_to_dict(config), sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Task:
    """Base class of pipeline tasks.

    Subclasses set ``dimensions`` (of their quanta), a ``Config`` dataclass, connections as class
    attributes, and implement ``run``.
    """

    dimensions: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type] = dataclasses.make_dataclass("Config", [])
    connections: ClassVar[dict[str, Connection]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, Connection] = {}
        for base in reversed(cls.__mro__):
            for attr, value in vars(base).items():
                if isinstance(value, Connection):
                    found[attr] = dataclasses.replace(value, name=attr) if value.name != attr else value
        cls.connections = found
        for attr, conn in found.items():
            setattr(cls, attr, conn)

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    # -- connection views ---------------------------------------------------------------------
    @classmethod
    def inputs(cls) -> dict[str, Input]:
        return {n: c for n, c in cls.connections.items()
                if isinstance(c, Input) and not isinstance(c, PrerequisiteInput)}

    @classmethod
    def prerequisites(cls) -> dict[str, PrerequisiteInput]:
        return {n: c for n, c in cls.connections.items() if isinstance(c, PrerequisiteInput)}

    @classmethod
    def outputs(cls) -> dict[str, Output]:
        return {n: c for n, c in cls.connections.items() if isinstance(c, Output)}

    @classmethod
    def init_outputs(cls) -> dict[str, InitOutput]:
        return {n: c for n, c in cls.connections.items() if isinstance(c, InitOutput)}

    # -- hooks ----------------------------------------------------------------------------------
    def run(self, *args: Any, **inputs: Any) -> Mapping[str, Any]:
        """The outputs by connection name, from the inputs passed by connection name.

        Subclasses name the inputs they take as keyword parameters (and ``context`` when they want
        the quantum's); this gradual signature lets each one narrow it (mypy accepts any override of
        ``(*args: Any, **kwargs: Any)``). The executor passes keywords only.
        """
        raise NotImplementedError(f"{type(self).__name__}.run")

    def make_init_outputs(self) -> dict[str, Any]:
        """Objects for the task's InitOutputs other than its config (e.g. an output schema)."""
        return {}
