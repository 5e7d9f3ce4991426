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


# -- hypothesis: deadline=None everywhere (a loaded CI machine must not make a property
# flaky); derandomized when CI=true so a CI run is repeatable.  VMNET_HYPOTHESIS_EXAMPLES
# scales the number of examples.
try:
    from hypothesis import settings as _hsettings
except ImportError:  # hypothesis is a test extra; test_properties.py needs it
    pass
else:
    _examples = int(os.environ.get("VMNET_HYPOTHESIS_EXAMPLES", "100"))
    _hsettings.register_profile("ci", derandomize=True, deadline=None, max_examples=_examples,
                                print_blob=True)
    _hsettings.register_profile("dev", deadline=None, max_examples=_examples)
    _hsettings.load_profile(
        "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else
        os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The robustness figures (kills, leaks, soak counts, examples) of this run."""
    from tests import figures

    lines = figures.summary_lines()
    if lines:
        terminalreporter.section("vmnet robustness figures")
        for line in lines:
            terminalreporter.write_line(line)
