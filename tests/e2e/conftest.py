"""End-to-end tests: real peers in network namespaces. Skipped unless this machine can build the lab."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .lab import REPO_ROOT, Lab, tail

E2E_DIR = Path(__file__).resolve().parent
REQUIRED_TOOLS = ("ip", "openvpn", "iperf3", "ping", "ss", "sysctl")
DEFAULT_TIMEOUT = 180  # seconds per test: a hung peer must not hang the run
LABS = pytest.StashKey[list]()

# bench/ holds the reference OpenVPN server the self-check and the benchmarks share.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@functools.cache
def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "e2e tests need root (network namespaces, TUN)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"e2e tests need {', '.join(missing)} on PATH"
    probe = f"p2sprobe{os.getpid()}"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        return f"'ip netns add' does not work here: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if E2E_DIR in item.path.parents]
    if not ours:
        return
    reason = lab_unavailable_reason()
    with_timeout = config.pluginmanager.hasplugin("timeout")
    for item in ours:
        item.add_marker(pytest.mark.e2e)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
        if with_timeout and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attach the lab's process logs to a failing test's report: the peer's side is usually the explanation."""
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for lab in item.stash.get(LABS, []):
            for path in lab.log_files:
                report.sections.append((f"lab log {path.name}", tail(path, 200)))
    return report


@pytest.fixture
def make_lab(request: pytest.FixtureRequest, tmp_path: Path):
    """Factory: make_lab(n_clients, **kwargs) -> an entered Lab, closed when the test ends."""
    labs: list[Lab] = []
    request.node.stash[LABS] = labs

    def factory(n_clients: int = 1, **kwargs) -> Lab:
        workdir = tmp_path / f"lab{len(labs)}"
        lab = Lab(n_clients, workdir=workdir, **kwargs)
        labs.append(lab)
        return lab.__enter__()

    yield factory
    errors = []
    for lab in reversed(labs):
        try:
            lab.close()
        except RuntimeError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def lab(make_lab) -> Lab:
    """A lab with one client namespace, c0."""
    return make_lab(1)
