"""The run configuration: the shipped defaults, merging, every class of bad key, no dead keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from engine import thresholds
from engine.models import registry
from services.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, load_tasks
from services.config.runs import (
    ThresholdRule,
    apply_threshold,
    file_run_plan,
    project_run_plan,
)
from services.config.schema import Config, leaf_keys
from services.training.fit import TrainingInputError, TrainOutcome, Validation


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None = None, **overrides: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or None)
    return info.value.problems


# --------------------------------------------------------------------------- the shipped file


def test_shipped_default_config_validates() -> None:
    config = load_config()
    assert config.values["model"]["name"] == registry.DEFAULT_MODEL
    assert config.values["data"]["path"] is None
    assert config.values["post_processing"]["threshold"]["method"] == "auto"
    assert file_run_plan(load_config(None, {"data": {"path": "x"}})).augmentation is None


def test_shipped_model_params_are_the_registry_defaults() -> None:
    """The file passes its params explicitly: a stale value would override a new engine
    default in silence, so they must be the registry's (seed follows data.seed)."""
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    defaults = dict(registry.spec(raw["model"]["name"]).default_config)
    defaults.pop("seed", None)
    assert raw["model"]["params"] == defaults, (
        "default_config.yaml model.params no longer match the registry's default_config of "
        f"{raw['model']['name']}: update the file (values and their comments)")


def test_every_key_of_the_shipped_file_is_documented() -> None:
    """Each key with a value has a comment right above it that says its default."""
    lines = DEFAULT_CONFIG_PATH.read_text().splitlines()
    for n, line in enumerate(lines):
        match = re.match(r"^(\s+)(\w+):\s*(\S.*)?$", line)
        if not match or match.group(3) is None:
            continue  # a section or mapping header
        above = []
        for prev in reversed(lines[:n]):
            if not prev.strip().startswith("#"):
                break
            above.append(prev)
        assert above, f"line {n + 1}: {line.strip()!r} has no comment above it"
        assert any("Default" in c for c in above) or match.group(2) in ("params",), (
            f"line {n + 1}: the comment of {match.group(2)!r} does not say its default")


class Tracked(dict):
    """A dict that records every key read through ``[]`` or ``get`` (dotted)."""

    def __init__(self, values: dict[str, Any], reads: set[str], prefix: str = "") -> None:
        super().__init__({k: Tracked(v, reads, f"{prefix}{k}.") if isinstance(v, dict) else v
                          for k, v in values.items()})
        self.reads, self.prefix = reads, prefix

    def __getitem__(self, key: str) -> Any:
        self.reads.add(f"{self.prefix}{key}")
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.reads.add(f"{self.prefix}{key}")
        return super().get(key, default)


def test_no_dead_keys_every_key_is_read_by_a_run() -> None:
    """Walk the keys of the shipped file: each one is read by the file-run or the project-run
    reader (the two code paths that turn a config into a training)."""
    reads: set[str] = set()
    file_config = load_config(None, {"data": {"path": "somewhere"}})
    file_run_plan(Config(Tracked(file_config.values, reads), file_config.layers))
    project_config = load_config()
    project_run_plan(Config(Tracked(project_config.values, reads), project_config.layers))
    keys = leaf_keys(yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()))
    assert len(keys) > 15
    dead = [k for k in keys if k not in reads]
    assert not dead, f"keys of default_config.yaml that nothing reads: {dead}"


# --------------------------------------------------------------------------- bad keys


def test_unknown_key_names_file_key_and_the_nearest_name(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data:\n  shot: 5\nmodle: {}\n")
    assert problems_of(path) == [
        f"{path}: modle: unknown key; did you mean 'model'? (allowed: model, data, "
        "augmentation, post_processing)",
        f"{path}: data.shot: unknown key; did you mean 'shots'? (allowed: path, layout, shots, "
        "seed)",
    ]


def test_wrong_types_and_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data:\n  shots: five\n  seed: -1\n"
                 "augmentation:\n  copies: 40\n  transforms: {a: 1}\n"
                 "post_processing:\n  threshold: {q: 120, k: true}\n")
    assert sorted(problems_of(path)) == sorted([
        f"{path}: data.shots: expected a whole number or null, got 'five' (text)",
        f"{path}: data.seed: -1 is out of range: must be between 0 and 4294967295",
        f"{path}: augmentation.copies: 40 is out of range: must be between 1 and 16",
        f"{path}: augmentation.transforms: expected a list or null, got a mapping",
        f"{path}: post_processing.threshold.q: 120 is out of range: must be between 0 and 100",
        f"{path}: post_processing.threshold.k: expected a number, got true (yes/no)",
    ])


def test_choice_with_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data: {layout: mvtek}\n"
                 "post_processing: {threshold: {method: percentil}}\n")
    lines = problems_of(path)
    assert f"{path}: data.layout: 'mvtek' is not allowed; did you mean 'mvtec'? (allowed: " \
           "auto, mvtec, flat)" in lines
    assert any(line.startswith(f"{path}: post_processing.threshold.method: 'percentil' is not "
                               "allowed; did you mean 'percentile'?") for line in lines)


def test_unknown_model_lists_the_registry(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "model:\n  name: kensa_patchcor\n  params: {x: 1}\n")
    (line,) = problems_of(path)  # no parameter check against an unknown model
    assert line.startswith(f"{path}: model.name: unknown model 'kensa_patchcor'; did you mean "
                           "'kensa_patchcore'? (known: ")
    assert all(name in line for name in registry.names())


def test_model_params_each_checked_by_the_registry(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "model:\n  params:\n    image_sise: 256\n"
                 "    image_size: 10\n    max_bank: lots\n    match_intensity: 1\n")
    lines = problems_of(path)
    assert any(line.startswith(f"{path}: model.params.image_sise: unknown parameter of "
                               "kensa_patchcore; did you mean 'image_size'?") for line in lines)
    assert f"{path}: model.params.image_size: image_size must be in [64, 2048], got 10" in lines
    assert f"{path}: model.params.max_bank: expected a whole number, got 'lots' (text)" in lines
    assert (f"{path}: model.params.match_intensity: expected true or false, got 1 (a whole "
            "number)") in lines
    assert len(lines) == 4


def test_every_registry_model_validates_with_its_defaults() -> None:
    for name in registry.names():
        try:
            config = load_config(None, {"model": {"name": name}})
        except ConfigError as exc:  # e.g. a model whose weights need a network here
            (line,) = exc.problems
            assert line.startswith("command line: model.name: ")
            assert registry.spec(name).needs_network, line
            continue
        if name != registry.DEFAULT_MODEL:  # another model: its own defaults, none of the file
            assert config.values["model"] == {"name": name, "params": {}}
        params = dict(registry.spec(name).default_config)
        assert load_config(None, {"model": {"name": name, "params": params}})


def test_transforms_are_checked_by_the_augmentation_schema(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "augmentation:\n  transforms:\n"
                 "    - {name: HorizontalFlp}\n    - {name: GaussNoise, p: 2}\n"
                 "    - {name: Affine, params: {rotate: [5, -5]}}\n")
    lines = problems_of(path)
    assert lines[0].startswith(f"{path}: augmentation.transforms[0].name: unknown transform "
                               "'HorizontalFlp'; did you mean 'HorizontalFlip'?")
    assert f"{path}: augmentation.transforms[1].p: must be a probability in [0, 1], got 2" \
        in lines
    assert any(line.startswith(f"{path}: augmentation.transforms[2].params.rotate: low 5")
               for line in lines)


def test_threshold_rules_that_need_each_other(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "post_processing: {threshold: {method: manual}}\n")
    assert problems_of(path) == [
        f"{path}: post_processing.threshold.method: manual needs "
        "post_processing.threshold.value: the raw score at or above which a part is a defect"]
    path = write(tmp_path / "d.yaml", "post_processing: {threshold: {value: 3.5}}\n")
    assert problems_of(path) == [
        f"{path}: post_processing.threshold.value: is only read when method is manual, but "
        "method is 'auto': set method: manual or remove the value"]


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "extra: 1\nmodel: {name: nope}\ndata: {shots: 0}\n"
                 "augmentation: {copies: 0}\npost_processing: {threshold: {k: -1}}\n")
    lines = problems_of(path)
    assert [line.split(": ")[1] for line in lines] == [
        "extra", "data.shots", "augmentation.copies", "post_processing.threshold.k",
        "model.name"]
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "data:\n  shots: 4\n  shots: 5\n")
    assert problems_of(path) == [f"{path}: line 3, column 3: key 'shots' appears twice "
                                 "(first on line 2)"]
    path = write(tmp_path / "d.yaml", "data: [1,\n")
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: line ")
    assert problems_of(tmp_path / "missing.yaml") == [f"{tmp_path / 'missing.yaml'}: no such "
                                                      "config file"]
    path = write(tmp_path / "e.yaml", "- a\n- b\n")
    (line,) = problems_of(path)
    assert line == (f"{path}: top level: expected a mapping of sections (model, data, "
                    "augmentation, post_processing), got a list")


def test_a_broken_default_file_is_named(tmp_path: Path) -> None:
    text = DEFAULT_CONFIG_PATH.read_text().replace("  layout: auto\n", "")
    broken = write(tmp_path / "default.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(defaults=broken)
    assert info.value.problems == [f"{broken}: data.layout: missing"]


# --------------------------------------------------------------------------- merging


def test_a_file_changes_only_its_keys_and_paths_are_relative_to_it(tmp_path: Path) -> None:
    path = write(tmp_path / "cfg" / "c.yaml", "model: {params: {image_size: 96}}\n"
                 "data: {path: ../data/widgets, shots: 4}\n")
    values = load_config(path).values
    assert values["model"]["params"]["image_size"] == 96
    defaults = registry.spec(registry.DEFAULT_MODEL).default_config
    assert values["model"]["params"]["max_bank"] == defaults["max_bank"]  # from the defaults
    assert values["data"] == {"path": str((tmp_path / "data" / "widgets").resolve()),
                              "layout": "auto", "shots": 4, "seed": 0}
    # a command-line folder is relative to the working directory, and wins
    values = load_config(path, {"data": {"path": "elsewhere"}}).values
    assert values["data"]["path"] == str(Path("elsewhere").resolve())


def test_another_model_starts_from_its_own_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "model:\n  name: anomalib_patchcore\n"
                 "  params: {coreset_ratio: 0.2}\n")
    assert load_config(path).values["model"] == {
        "name": "anomalib_patchcore", "params": {"coreset_ratio": 0.2}}
    path = write(tmp_path / "d.yaml", "model:\n  name: anomalib_patchcore\n"
                 "  params: {image_size: 96}\n")
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: model.params.image_size: unknown parameter of "
                           "anomalib_patchcore")
    assert load_config(None, {"model": {"name": registry.DEFAULT_MODEL}}).values["model"][
        "params"]["image_size"] == registry.spec(registry.DEFAULT_MODEL).default_config[
        "image_size"]  # the same model: the file's params stay


def test_empty_sections_and_files_change_nothing(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "a.yaml", "")).values == load_config().values
    assert load_config(write(tmp_path / "b.yaml", "augmentation:\n")).values == \
        load_config().values


# --------------------------------------------------------------------------- readers


def test_file_runs_refuse_presets_and_a_missing_folder(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "augmentation: {preset: shiny}\n")
    with pytest.raises(ConfigError) as info:
        file_run_plan(load_config(path))
    assert info.value.problems == [
        f"{DEFAULT_CONFIG_PATH}: data.path: no dataset folder; give --data DIR or set "
        "data.path",
        f"{path}: augmentation.preset: file runs have no presets ('shiny' lives in a project); "
        "list the steps under augmentation.transforms, or use train-all on the project"]


def test_file_run_plan_carries_every_section(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "model: {params: {image_size: 96}}\n"
                 "data: {path: d, shots: 3, seed: 7, layout: mvtec}\n"
                 "augmentation: {transforms: [{name: HorizontalFlip}], copies: 3, seed: 5}\n"
                 "post_processing: {threshold: {method: percentile, q: 95}}\n")
    plan = file_run_plan(load_config(path))
    assert (plan.data, plan.layout, plan.shots, plan.seed) == ((tmp_path / "d").resolve(),
                                                               "mvtec", 3, 7)
    assert plan.params["image_size"] == 96 and plan.algorithm == registry.DEFAULT_MODEL
    assert plan.augmentation == {"preset": "config file", "copies": 3, "config": {
        "version": 1, "seed": 5, "transforms": [{"name": "HorizontalFlip"}]}}
    assert plan.threshold == ThresholdRule("percentile", 3.0, 95.0, None)


def test_project_runs_refuse_what_they_cannot_honour(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "augmentation: {transforms: [{name: HorizontalFlip}]}\n"
                 "post_processing: {threshold: {method: percentile}}\n")
    with pytest.raises(ConfigError) as info:
        project_run_plan(load_config(path))
    assert [line.split(": ")[1] for line in info.value.problems] == [
        "augmentation.transforms", "post_processing.threshold.method"]
    plan = project_run_plan(load_config(None, {"data": {"shots": 3}}))
    assert (plan.shots, plan.augmentation, plan.data) == (3, "auto", None)
    none = write(tmp_path / "n.yaml", "augmentation: {preset: none}\n")
    assert project_run_plan(load_config(none)).augmentation is None


def _outcome(goods: list[float], defects: list[float], synthetic: int = 0) -> TrainOutcome:
    scores = np.asarray(goods + defects, dtype=np.float64)
    labels = np.asarray([0] * len(goods) + [1] * len(defects))
    validation = Validation([f"i{i}" for i in range(scores.size)], labels, scores,
                            synthetic={len(goods) + j: object() for j in range(synthetic)})
    auto = thresholds.ThresholdResult("f1_optimal", 5.0, {})
    return TrainOutcome(None, "m", {}, [], None, validation, auto, {"image_auroc": 1.0})


def test_threshold_rules_are_applied_to_the_held_out_scores() -> None:
    goods, defects = [1.0, 2.0, 3.0, 4.0], [9.0, 10.0]
    out = apply_threshold(_outcome(goods, defects), ThresholdRule("auto", 3.0, 99.0, None))
    assert out.threshold.value == 5.0 and out.metrics["f1_at_threshold"] == 1.0
    out = apply_threshold(_outcome(goods, defects), ThresholdRule("mean_k_sigma", 2.0, 99.0,
                                                                  None))
    assert out.threshold.method == "mean_k_sigma"
    assert out.threshold.value == pytest.approx(np.mean(goods) + 2 * np.std(goods, ddof=1))
    out = apply_threshold(_outcome(goods, defects), ThresholdRule("percentile", 3.0, 50.0,
                                                                  None))
    assert out.threshold.value == pytest.approx(2.5)
    assert out.metrics["precision_at_threshold"] == pytest.approx(2 / 4)
    out = apply_threshold(_outcome(goods, defects), ThresholdRule("manual", 3.0, 99.0, 9.5))
    assert out.threshold.value == 9.5 and out.metrics["recall_at_threshold"] == 0.5
    out = apply_threshold(_outcome(goods, defects), ThresholdRule("f1_optimal", 3.0, 99.0,
                                                                  None))
    assert out.threshold.value == pytest.approx(6.5)  # mid-plateau between 4 and 9
    with pytest.raises(TrainingInputError, match="f1_optimal needs defect images held out"):
        apply_threshold(_outcome(goods, [9.0], synthetic=1),
                        ThresholdRule("f1_optimal", 3.0, 99.0, None))


# --------------------------------------------------------------------------- tasks files


def test_tasks_file_merges_defaults_and_each_task(tmp_path: Path) -> None:
    path = write(tmp_path / "t" / "tasks.yaml", """
defaults:
  model: {params: {image_size: 96}}
  data: {shots: 3}
tasks:
  - name: bottle
    data: ../bottle
  - name: screw
    data: {path: /abs/screw, shots: 5}
    model: {name: anomalib_patchcore}
  - name: cable
""")
    bottle, screw, cable = load_tasks(path, overrides={"data": {"seed": 9}})
    assert (bottle.name, bottle.index, bottle.folder) == ("bottle", 0, "bottle")
    assert bottle.config.values["data"] == {"path": str((tmp_path / "bottle").resolve()),
                                            "layout": "auto", "shots": 3, "seed": 9}
    assert bottle.config.values["model"]["params"]["image_size"] == 96
    assert screw.config.values["data"]["shots"] == 5
    assert screw.config.values["model"] == {"name": "anomalib_patchcore", "params": {}}
    assert cable.config.values["data"]["path"] is None


def test_tasks_file_problems_are_all_listed_with_their_task(tmp_path: Path) -> None:
    path = write(tmp_path / "tasks.yaml", """
defaults:
  model: {params: {image_sze: 96}}
tasks:
  - name: widgets
    dat: d/widgets
  - name: widgets
    data: {shots: -1}
  - {data: x}
  - name: a b
  - name: a-b
extra: 3
""")
    with pytest.raises(ConfigError) as info:
        load_tasks(path)
    lines = info.value.problems
    assert lines[0] == f"{path}: extra: unknown key (allowed: defaults, tasks)"
    assert f"{path}: tasks[0].dat: unknown key; did you mean 'data'? (allowed: name, model, " \
           "data, augmentation, post_processing)" in lines
    image_sze = [x for x in lines if "defaults.model.params.image_sze" in x]
    assert len(image_sze) == 1  # shared by every task, said once
    assert f"{path}: tasks[1].name: 'widgets' is tasks[0]'s name too; names must be unique" \
        in lines
    assert f"{path}: tasks[1].data.shots: -1 is out of range: must be at least 1" in lines
    assert f"{path}: tasks[2].name: missing (the project or run folder name)" in lines
    assert f"{path}: tasks[4].name: 'a-b' and tasks[3]'s 'a b' would share the run folder " \
           "'a-b'; rename one" in lines
    with pytest.raises(ConfigError, match="tasks: expected a list of at least one task"):
        load_tasks(write(tmp_path / "empty.yaml", "tasks: []\n"))
