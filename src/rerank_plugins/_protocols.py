"""What a `typing.Protocol` asks of an object, read from the protocol itself."""

from __future__ import annotations

import inspect

__all__ = ["missing_members", "protocol_members"]


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The public members a protocol declares: its annotated attributes, then its methods.

    Read from the class, so the list cannot drift from the protocol it describes.

    Examples:
        >>> from typing import Protocol
        >>> class Sized(Protocol):
        ...     unit: str
        ...     def size(self) -> int: ...
        >>> protocol_members(Sized)
        ('unit', 'size')
    """
    names = list(inspect.get_annotations(protocol))
    names += [n for n in vars(protocol) if not n.startswith("_") and n not in names]
    return tuple(names)


def missing_members(obj: object, protocol: type) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks, in the protocol's order."""
    return [name for name in protocol_members(protocol) if not hasattr(obj, name)]
