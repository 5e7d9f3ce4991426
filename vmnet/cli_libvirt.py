"""`vmnet` commands for the libvirt side (registered on import by vmnet.cli)."""

from __future__ import annotations
