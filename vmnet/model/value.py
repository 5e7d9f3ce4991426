"""Plain value classes: `__slots__`, equality and repr from the slots, no code generation.

`dataclasses` costs ~17 ms to import (it pulls in inspect, re and enum) and
generates each class's methods with exec(): more than the whole budget of a
VM start.  Classes that hold data derive from `Value` and write their typed
`__init__` by hand; this gives them the rest.
"""

from __future__ import annotations


class Value:
    """Equality, hashing and repr over the fields named in `__slots__`."""

    __slots__: tuple[str, ...] = ()

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.values() == other.values()  # type: ignore[attr-defined, unused-ignore]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self).__name__, *(
            tuple(v) if isinstance(v, list) else v for v in self.values())))

    def __repr__(self) -> str:
        inner = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"{type(self).__name__}({inner})"

    def as_dict(self) -> dict[str, object]:
        """The fields as a dict (values as they are: nested values stay objects)."""
        return {s: getattr(self, s) for s in self.__slots__}
