from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.nsutil import Netns, netns


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        # Kernel tests need root; they skip with a reason below.
        pass


@pytest.fixture
def ns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces)")
    with netns() as n:
        yield n


@pytest.fixture
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("state"))
