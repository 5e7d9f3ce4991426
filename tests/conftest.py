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
def state_dir(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A state directory; in modules that say BOTH_WAYS = True, each test runs twice:
    in-process, and with a vmnetd serving the directory (tests.daemon)."""
    path = str(tmp_path_factory.mktemp("state"))
    if getattr(request, "param", "in-process") == "in-process":
        yield path
        return
    from tests.daemon import vmnetd

    with vmnetd(path):
        yield path


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """BOTH_WAYS modules: every test that takes a state directory runs in-process and
    through vmnetd, but those marked in_process (fault injection wraps the in-process
    engine: vmnetd's own crash safety is tests/test_daemon.py's)."""
    if "state_dir" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_WAYS", False) \
            and metafunc.definition.get_closest_marker("in_process") is None:
        metafunc.parametrize("state_dir", ["in-process", "vmnetd"], indirect=True)


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
