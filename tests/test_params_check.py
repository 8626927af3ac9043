"""The params promise under `dvc repro`: every change to params.yaml runs the check-params stage
first, so a misspelt key or section, or a bad value of a knob no stage lists, fails `dvc repro` (and
`dvc exp run`) with one line, instead of "Data and pipelines are up to date"."""

from __future__ import annotations

import re

import pytest
from tiny_repo import commit, make_tiny_repo, run

pytestmark = pytest.mark.xdist_group("params_check")  # one worker builds the module's project


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The tiny project with its teacher built (and so check-params run once), committed."""
    repo = make_tiny_repo(tmp_path_factory.mktemp("params_check"))
    run(["dvc", "repro", "teacher"], repo)
    commit(repo, "teacher")
    return repo


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def set_log_every(text: str, value: str) -> str:
    """distill.log_every (listed by no stage) set to `value`."""
    new, n = re.subn(r"(?m)^(distill:.*(?:\n .*)*?\n  log_every:) \d+", rf"\1 {value}", text, count=1)
    assert n == 1
    return new


CASES = {  # name: (edit of params.yaml, words the one error line names)
    "misspelt key": (lambda t: edit(t, "\ndistill:", "\ndistill:\n  lrr: 0.01"), ["distill", "lrr", "did you mean lr?"]),
    "bad unlisted value": (lambda t: set_log_every(t, "abc"),
                           ["distill.log_every", "abc"]),
    "misspelt section": (lambda t: t + "\ndistil:\n  lr: 0.01\n", ["distil", "did you mean distill?"]),
    "last beyond the layers": (lambda t: edit(t, '  last: "03"', '  last: "04"'), ["distill.last", '"03"']),
}


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_a_bad_params_yaml_fails_dvc_repro_with_one_line(repo, name):
    change, words = CASES[name]
    params = repo / "params.yaml"
    original = params.read_text()
    params.write_text(change(original))
    try:
        proc = run(["dvc", "repro", "teacher"], repo, check=False)
        assert proc.returncode != 0, f"dvc repro accepted the {name}:\n{proc.stdout[-2000:]}"
        lines = error_lines(proc)
        assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stdout + proc.stderr
        assert "Running stage 'teacher'" not in proc.stdout
    finally:
        params.write_text(original)


@pytest.mark.slow
def test_dvc_exp_run_of_a_layer_the_teacher_lacks_names_the_key_not_a_missing_path(repo):
    """`-S distill.last="04"` with layer 04 added, on a 3-layer teacher: check-params runs first and
    says so, before DVC could stop on data/students/layer_04 not existing."""
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(edit(original, '    "03": {prev: "02"}', '    "03": {prev: "02"}\n    "04": {prev: "03"}'))
        commit(repo, "a layer 04")
        proc = run(["dvc", "exp", "run", "--temp", "-S", 'distill.last="04"'], repo, check=False)
        assert proc.returncode != 0
        lines = error_lines(proc)
        assert len(lines) == 1 and "has 3 decoder layers" in lines[0] and "distill.last" in lines[0], proc.stdout + proc.stderr
        assert "No such file or directory" not in proc.stdout + proc.stderr
    finally:
        params.write_text(original)
        commit(repo, "back to 3 layers")


@pytest.mark.slow
def test_a_valid_change_to_an_unlisted_knob_reruns_nothing_but_the_check(repo):
    params = repo / "params.yaml"
    original = params.read_text()
    params.write_text(set_log_every(original, "7"))
    try:
        proc = run(["dvc", "repro", "teacher"], repo)
        assert "Running stage 'check-params'" in proc.stdout and "Running stage 'teacher'" not in proc.stdout
    finally:
        params.write_text(original)
        run(["dvc", "repro", "teacher"], repo)
