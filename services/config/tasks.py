"""Tasks files: several trainings in one YAML, for ``multi-task-train`` and ``train-all --tasks``.

The format (a task's sections override ``default_config.yaml`` exactly like a ``--config``
file does, after the file's optional ``defaults``)::

    defaults:                       # optional: merged over default_config.yaml for every task
      model: {params: {image_size: 256}}
    tasks:
      - name: bottle                # required, unique: the run folder / the project's name
        data: datasets/bottle       # a folder; short for data: {path: datasets/bottle}
      - name: screw
        data: {path: datasets/screw, shots: 8}
        model: {name: anomalib_patchcore}
        post_processing: {threshold: {method: percentile, q: 99.5}}
      - name: cable                 # train-all only: an existing project, nothing imported

Paths are relative to the tasks file. ``multi-task-train`` trains ``data.path`` into
``OUT/<name>``; ``train-all`` imports ``data.path`` (when given) into the project ``name``
first (created if new; a project made from another folder is refused), then queues its
training.

The whole file is checked before anything runs, every problem of every task listed at once:
a typo in task 7 must not surface after six trainings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.config.schema import (
    SECTIONS,
    Config,
    ConfigError,
    Layer,
    default_layer,
    did_you_mean,
    read_yaml,
    validate,
)

TOP_KEYS = ("defaults", "tasks")
TASK_KEYS = ("name", *SECTIONS)


@dataclass
class Task:
    """One task of a tasks file: its name, position, merged config and run folder name."""

    name: str
    index: int
    config: Config
    folder: str


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) \
        else "nothing (null)" if value is None else repr(value)


def load_tasks(path: str | Path, overrides: Mapping[str, Any] | None = None,
               defaults: str | Path | None = None) -> list[Task]:
    """Every task of the tasks file at ``path``, each config merged as: the defaults file,
    the tasks file's ``defaults``, the task, then ``overrides`` (command-line flags).
    :class:`ConfigError` lists every problem of the file."""
    from services.data.imports import project_slug
    from services.data.names import NameRefused, clean_name

    path = Path(path)
    source, base = str(path), path.expanduser().resolve().parent
    raw = read_yaml(path)
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: top level: expected a mapping with tasks (a list) and "
                           f"optionally defaults, got {_kind(raw)}"])
    for key in raw:
        if key not in TOP_KEYS:
            problems.append(f"{source}: {key}: unknown key{did_you_mean(str(key), TOP_KEYS)}")
    shared = raw.get("defaults") or {}
    if not isinstance(shared, dict):
        problems.append(f"{source}: defaults: expected a mapping of sections "
                        f"({', '.join(SECTIONS)}), got {_kind(shared)}")
        shared = {}
    items = raw.get("tasks")
    if not isinstance(items, list) or not items:
        problems.append(f"{source}: tasks: expected a list of at least one task (each with a "
                        f"name), got {_kind(items)}")
        items = []
    first = default_layer(defaults)
    tasks: list[Task] = []
    folders: dict[str, tuple[str, int]] = {}
    for i, item in enumerate(items):
        where = f"{source}: tasks[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping with a name, got {_kind(item)}")
            continue
        for key in item:
            if key not in TASK_KEYS:
                problems.append(f"{where}.{key}: unknown key{did_you_mean(str(key), TASK_KEYS)}")
        name = None
        if "name" not in item:
            problems.append(f"{where}.name: missing (the project or run folder name)")
        elif not isinstance(item["name"], str):
            problems.append(f"{where}.name: expected text, got {_kind(item['name'])}")
        else:
            try:
                name = clean_name(item["name"], "task")
            except NameRefused as exc:
                problems.append(f"{where}.name: {exc}")
        if name is not None:
            folder = project_slug(name)
            if folder in folders:
                other, j = folders[folder]
                problems.append(
                    f"{where}.name: {name!r} is tasks[{j}]'s name too; names must be unique"
                    if other == name else
                    f"{where}.name: {name!r} and tasks[{j}]'s {other!r} would share the run "
                    f"folder {folder!r}; rename one")
            folders.setdefault(folder, (name, i))
        values = {k: v for k, v in item.items() if k in SECTIONS}
        if isinstance(values.get("data"), str):  # ``data: DIR`` short for ``data: {path: DIR}``
            values["data"] = {"path": values["data"]}
        layers = [first, Layer(source, shared, "defaults.", base),
                  Layer(source, values, f"tasks[{i}].", base)]
        if overrides:
            layers.append(Layer("command line", overrides))
        try:
            config = validate(layers)
        except ConfigError as exc:
            problems += [p for p in exc.problems if p not in problems]  # shared ones once
            continue
        if name is not None:
            tasks.append(Task(name, i, config, project_slug(name)))
    if problems:
        raise ConfigError(problems)
    return tasks
