"""dvc.yaml's code deps are complete: for every stage run as `python -m pipeline.X`, each project
file that module imports, directly or through other project modules (imports inside functions
included), must be covered by one of the stage's deps; a listed directory covers every file
under it. Otherwise an edit to that file would leave the stage wrongly up to date.

    python .ci/deps_check.py [REPO]     # prints one line per uncovered file; exit 1 if any

Static imports only (`import a.b`, `from a import b`, relative imports); each package's
`__init__.py` on the way counts, since Python runs it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

PACKAGES = ("hyena", "pipeline", "tools")


def module_file(root: Path, module: str) -> Path | None:
    """The project file that defines `module`, or None (outside the project, or not a module)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(root: Path, path: Path) -> set[str]:
    """Every module name that `path` imports (for `from a import b`: both a and a.b, since b may
    be a submodule), relative imports resolved against its package."""
    parts = path.relative_to(root).with_suffix("").parts
    package = parts[:-1]  # for a/b/__init__.py and a/b/c.py alike: a.b
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def project_closure(root: Path, start: Path) -> set[Path]:
    """`start` and every project file it imports, transitively, packages' __init__.py included."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(root, path):
            pieces = name.split(".")
            for i in range(1, len(pieces) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                found = module_file(root, ".".join(pieces[:i]))
                if found is not None:
                    todo.append(found)
    return seen


def stage_commands(dvc: dict) -> dict[str, tuple[str, list[str]]]:
    """{stage: (module run by `python -m`, deps as written)} for the stages run that way
    (a foreach stage's template stands for all of its instances)."""
    out = {}
    for name, stage in (dvc.get("stages") or {}).items():
        stage = stage.get("do", stage)
        cmd = stage.get("cmd", "")
        words = (" ".join(cmd) if isinstance(cmd, list) else cmd).split()
        for i, word in enumerate(words[:-1]):
            if word == "-m" and words[i + 1].startswith("pipeline."):
                deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps") or []]
                out[name] = (words[i + 1], [str(d).rstrip("/") for d in deps])
                break
    return out


def uncovered(root: Path) -> list[str]:
    """'stage: file' for every imported project file that none of the stage's deps covers."""
    root = root.resolve()
    problems = []
    for name, (module, deps) in stage_commands(yaml.safe_load((root / "dvc.yaml").read_text())).items():
        start = module_file(root, module)
        if start is None:
            problems.append(f"{name}: runs {module}, which is not a project file")
            continue
        for used in sorted(project_closure(root, start)):
            rel = used.relative_to(root).as_posix()
            if not any(rel == dep or rel.startswith(dep + "/") for dep in deps):
                problems.append(f"{name}: {rel} is imported but not in deps")
    return problems


def main(argv: list[str]) -> int:
    problems = uncovered(Path(argv[1] if len(argv) > 1 else "."))
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
