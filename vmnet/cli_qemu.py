"""`vmnet` commands for the qemu side (registered on import by vmnet.cli)."""

from __future__ import annotations
