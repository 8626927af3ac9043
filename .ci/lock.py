"""Print requirements.lock: the exact version of every package that `pip install -e ".[dev]"`
pulls in, read from the environment this runs in (so: the versions the tests passed with).

    python .ci/lock.py > requirements.lock      # then commit it

The closure is walked from the installed project (its dependencies and dev extra, as
pyproject.toml declared them at install time) through each installed distribution's own
requirements, markers evaluated for this interpreter and platform. Only the standard library
and `packaging` (a pip dependency) are needed.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "scavenging-hyena"


def closure(roots: list[Requirement]) -> dict[str, str]:
    """{canonical name: installed version} of `roots` and everything they require."""
    versions: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"{req.name} is not installed: run pip install -e \".[dev]\" first")
        versions[key[0]] = dist.version
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    return versions


def locked_versions() -> dict[str, str]:
    """What requirements.lock pins: the closure of the project with its dev extra, without the
    project itself; a local version label (torch's +cpu) names the wheel, not the version."""
    versions = closure([Requirement(f"{PROJECT}[dev]")])
    versions.pop(canonicalize_name(PROJECT))
    return {name: version.split("+")[0] for name, version in versions.items()}


def main() -> None:
    versions = locked_versions()
    print("# requirements.lock: the tested version of every package `pip install -e \".[dev]\"` pulls in.")
    print("# Install with: pip install -c requirements.lock -e \".[dev]\"")
    print("# Refresh (README, 'Reproducible installs'): python .ci/lock.py > requirements.lock")
    print(f"# Made on CPython {platform.python_version()}, {sys.platform} {platform.machine()}.")
    for name, version in sorted(versions.items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
