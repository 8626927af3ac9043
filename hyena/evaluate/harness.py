"""Zero-shot lm-eval-harness tasks on an in-memory model (fp32), offline or with lm-eval's own tasks.

Offline ("local") tasks are the YAML templates shipped in `hyena/eval_tasks/`; their data paths
read `@DATA_DIR@/...`, which is replaced by the absolute data directory in a temporary copy at
run time (lm-eval resolves relative paths against the working directory, not the YAML).
Online ("builtin") users pass lm-eval's task names instead.

A user's own task YAMLs (`eval.include_path`, a directory lm-eval indexes like its own) run in
the same lm-eval call, next to either; their results are keyed by their lm-eval task names.

Results per task key: acc, acc_stderr and, where the task defines it, acc_norm, acc_norm_stderr
(length-normalised accuracy), plus n (examples scored).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

TASKS_DIR = Path(__file__).resolve().parents[1] / "eval_tasks"
PLACEHOLDER = "@DATA_DIR@"

# Report key -> (offline task shipped here, lm-eval built-in task). Paper Table 2 order.
TASKS: dict[str, tuple[str, str]] = {
    "arc_challenge": ("hyena_arc_challenge", "arc_challenge"),
    "arc_easy": ("hyena_arc_easy", "arc_easy"),
    "logiqa": ("hyena_logiqa", "logiqa"),
    "piqa": ("hyena_piqa", "piqa"),
    "sciq": ("hyena_sciq", "sciq"),
    "winogrande": ("hyena_winogrande", "winogrande"),
    "wsc": ("hyena_wsc", "wsc"),
}


class _TagLoader(yaml.SafeLoader):
    """Reads lm-eval YAML without importing `!function` targets."""


_TagLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def task_data_files(task_yaml: Path) -> list[Path]:
    cfg = yaml.load(task_yaml.read_text(), Loader=_TagLoader)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or {}
    return [Path(p) for p in (files.values() if isinstance(files, dict) else [files])]


@contextlib.contextmanager
def prepared_tasks(data_dir: str | Path, keys: list[str]) -> Iterator[Path]:
    """A temporary include dir holding the shipped task YAMLs for `keys` with absolute data paths.

    Raises FileNotFoundError naming the task and the path for any missing data file.
    """
    unknown = [k for k in keys if k not in TASKS]
    if unknown:
        raise ValueError(f"unknown offline eval task(s) {unknown}; offline tasks: {', '.join(TASKS)} (or use task_source: builtin)")
    data_dir = Path(data_dir).resolve()
    with tempfile.TemporaryDirectory(prefix="hyena-eval-tasks-") as tmp:
        out = Path(tmp)
        shutil.copy(TASKS_DIR / "hyena_task_utils.py", out)
        for key in keys:
            name = TASKS[key][0]
            text = (TASKS_DIR / f"{name}.yaml").read_text().replace(PLACEHOLDER, data_dir.as_posix())
            (out / f"{name}.yaml").write_text(text)
            for path in task_data_files(out / f"{name}.yaml"):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"eval task '{key}': data file not found: {path} "
                        f"(set eval.task_data_dir to the directory holding the task data, e.g. ../shared/eval)"
                    )
        yield out


def user_tasks(include_path: str | Path, names: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The tasks to run from a directory of the user's lm-eval task YAMLs: `names` (tasks or
    groups that lm-eval finds there), or every task defined there when `names` is empty.
    One-line errors name eval.include_path / eval.include_tasks and the fix."""
    from lm_eval.tasks import TaskManager

    d = Path(include_path)
    if not d.is_dir():
        raise FileNotFoundError(f"eval.include_path {include_path} is not a directory of lm-eval task YAMLs "
                                "(fix the path, or set it to \"\" to run only eval.tasks)")
    manager = TaskManager(include_path=str(d), include_defaults=False)
    if not manager.all_subtasks:
        raise ValueError(f"eval.include_path {include_path} defines no lm-eval task (no YAML with a `task:` name)")
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ValueError(f"eval.include_tasks: {', '.join(unknown)} not defined in {include_path} "
                         f"(it defines: {', '.join(manager.all_tasks)})")
    chosen = list(names) or list(manager.all_subtasks)
    clash = [n for n in chosen if n in TASKS]
    if clash:
        raise ValueError(f"eval.include_path: task name(s) {', '.join(clash)} clash with the shipped task keys; "
                         "rename them in your YAMLs")
    return chosen


def _metrics(task_result: dict, n: int | None) -> dict:
    out = {}
    for metric in ("acc", "acc_norm"):
        value = task_result.get(f"{metric},none")
        if value is None:
            continue
        out[metric] = float(value)
        stderr = task_result.get(f"{metric}_stderr,none")
        out[f"{metric}_stderr"] = float(stderr) if isinstance(stderr, (int, float)) else None
    if n is not None:
        out["n"] = int(n)
    return out


def causal_lm(model, tokenizer, batch_size: int = 8, device: str = "cpu"):
    """lm-eval's HFLM around an in-memory causal LM. The backend is named: HFLM decides it from
    transformers' built-in table of causal model types, which registered classes (the Hyena
    students) are not in, and would warn that the model is "neither marked as CausalLM or Seq2SeqLM"."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, backend="causal")


def run_tasks(
    model,
    tokenizer,
    keys: list[str],
    source: str = "local",
    data_dir: str | Path = "../shared/eval",
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    include_path: str | Path | None = None,
    include_tasks: list[str] | tuple[str, ...] = (),
) -> dict[str, dict]:
    """Zero-shot accuracies of an in-memory causal LM: {task key: {acc, acc_stderr, [acc_norm, ...], n}}.

    source "local": the shipped offline tasks (keys from TASKS, data under data_dir);
    source "builtin": lm-eval's own task names (keys in TASKS map to lm-eval's names; any
    other key is passed to lm-eval as is). `include_tasks` (see `user_tasks`) from the task
    YAMLs in `include_path` run in the same call, keyed by their own names.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if source not in ("local", "builtin"):
        raise ValueError(f"eval.task_source must be 'local' or 'builtin', got {source!r}")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model.eval()
    lm = causal_lm(model, tokenizer, batch_size, device)
    extra = [str(include_path)] if include_tasks else []
    with contextlib.ExitStack() as stack:
        if source == "local":
            include = stack.enter_context(prepared_tasks(data_dir, keys))
            names = {k: TASKS[k][0] for k in keys}
            manager = TaskManager(include_path=[str(include), *extra], include_defaults=False)
        else:
            names = {k: TASKS.get(k, (k, k))[1] for k in keys}
            manager = TaskManager(include_path=extra or None)
        names.update({t: t for t in include_tasks})
        res = simple_evaluate(
            model=lm, tasks=list(names.values()), num_fewshot=0, limit=limit, task_manager=manager,
            bootstrap_iters=1000, log_samples=False,
        )
    n_samples = res.get("n-samples", {})
    out = {}
    for key, name in names.items():
        if name not in res["results"]:
            raise RuntimeError(f"lm-eval returned no result for task '{key}' ({name})")
        n = (n_samples.get(name) or {}).get("effective")
        out[key] = _metrics(res["results"][name], n)
    return out
