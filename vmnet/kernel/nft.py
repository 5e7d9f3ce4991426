"""nftables, through the `nft` program (the netlink protocol of nf_tables is a moving
target; nft is what every firewall on the host speaks, and `nft -f -` applies a
whole script in one kernel transaction: all of it or none).
"""

from __future__ import annotations

import os

from vmnet.errors import KernelError, NotFoundError

NFT_PATHS = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")


def binary() -> str:
    found = next((p for p in NFT_PATHS if os.access(p, os.X_OK)), None)
    if found is None:
        raise NotFoundError("nft is not installed; nat and isolated networks need it",
                            hint="apt-get install nftables")
    return found


def apply(script: str) -> None:
    """Run an nft script atomically (`nft -f -`)."""
    import subprocess

    r = subprocess.run([binary(), "-f", "-"], input=script, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        detail = " ".join(r.stderr.split())[:400]
        raise KernelError(f"nft refused vmnet's rules: {detail}",
                          hint="check that the kernel has nf_tables with nat support")


def run(*args: str) -> str:
    """Run `nft ARGS` and return its output (e.g. `-a -e insert rule ...` echoes the handle)."""
    import subprocess

    r = subprocess.run([binary(), *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        detail = " ".join(r.stderr.split())[:400]
        raise KernelError(f"nft {' '.join(args[:4])}... failed: {detail}")
    return r.stdout


def ruleset() -> dict[str, object]:
    """The namespace's whole ruleset as nft's JSON (`nft -j list ruleset`)."""
    import json

    out = run("-j", "list", "ruleset")
    try:
        data = json.loads(out or "{}")
    except ValueError:
        raise KernelError("nft -j list ruleset printed no JSON") from None
    return data if isinstance(data, dict) else {}
