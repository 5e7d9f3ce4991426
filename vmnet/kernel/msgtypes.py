"""The base of the small result types of vmnet's netlink codec (Addr, Route, ...).

They sit on paths that must start in a few milliseconds, so they are plain
classes with __slots__ rather than dataclasses (whose import and class
generation cost milliseconds).  Record supplies value equality and a readable
repr over the fields a subclass lists in __slots__.
"""

from __future__ import annotations


class Record:
    """Equality and repr over the subclass's __slots__ (its fields).

    Records compare equal only to records of the same class with equal fields.
    They are not hashable (they are not frozen): key them by a field tuple.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        names: tuple[str, ...] = self.__slots__
        return all(getattr(self, k) == getattr(other, k) for k in names)

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in names)
        return f"{type(self).__name__}({fields})"
