"""requirements.lock pins what the tests run with: every package `pip install -e ".[dev]"` pulls in,
at a version the project's requirements allow and equal to the one installed here (CI installs
from it)."""

from __future__ import annotations

import importlib.metadata as md

from conftest import ROOT, ci_script
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def lock_tool():
    return ci_script("lock")


def test_every_direct_dependency_is_pinned_within_its_range_and_torch_stays_2_13():
    pins = locked()
    for line in md.requires(lock_tool().PROJECT):
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": "dev"}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: python .ci/lock.py > requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req.specifier}"
    assert pins["torch"] == "2.13.0"


def test_the_lock_is_what_is_installed():
    """Fails when a package was upgraded or added without refreshing the lock (see README)."""
    pins, have = locked(), lock_tool().locked_versions()
    assert {n: (pins.get(n), v) for n, v in have.items() if pins.get(n) != v} == {}, \
        "refresh it: python .ci/lock.py > requirements.lock"
    assert set(pins) == set(have)
