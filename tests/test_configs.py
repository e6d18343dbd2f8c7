"""Every YAML under configs/ loads and validates: a preset that a key rename broke fails here."""

from dataclasses import asdict, fields
from pathlib import Path

import pytest
import yaml

from phf.config import (
    OBJECTIVES,
    AWRConfig,
    ConditionalConfig,
    ConfigError,
    FilteringConfig,
    ObjectiveConfig,
    load_config,
    to_yaml,
)
from phf.study import load_study

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STUDIES = sorted((CONFIGS / "experiments").glob("*.yaml"))
TRAINING = sorted(p for p in CONFIGS.rglob("*.yaml") if p not in STUDIES)


def test_every_yaml_is_checked():
    assert len(STUDIES) + len(TRAINING) == len(list(CONFIGS.rglob("*.yaml"))) and STUDIES and TRAINING


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_training_config_validates(path, tmp_path):
    # data.path and output_dir are left to the command line; a base file may leave the length too.
    overrides = [f"data.path={tmp_path}", f"output_dir={tmp_path / 'run'}", "training.max_steps=1"]
    config = load_config([str(path)], overrides)
    if path.parent.name in ("toxicity", "pii", "pep8") and path.stem != "base":
        assert config.objective.name == path.stem  # a preset trains the objective it is named for


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_config_validates_and_its_presets_exist(path):
    study = load_study(str(path))
    for task in study.tasks:
        for objective in study.objectives:
            assert (CONFIGS.parent / study.preset / task / f"{objective}.yaml").exists(), (path.name, task, objective)


# config.yaml files as phf wrote them before the objective sections (flat objective keys), and each
# one's objective as it reads now.
FLAT = Path(__file__).resolve().parent / "fixtures" / "flat-configs"
SECTIONS = {
    "conditional": ConditionalConfig(
        percentile=40.0, drop_prob=0.2, bad_threshold=0.05, labels="document-mean", tag_every=4
    ),
    "filtering": FilteringConfig(percentile=60.0),
    "awr": AWRConfig(alpha=0.3, beta=0.2, weight_clip=2.0),
}


def _written_part(read: dict, written: dict) -> dict:
    """``read`` cut down to the keys of ``written``, nested sections included."""
    return {k: _written_part(read[k], v) if isinstance(v, dict) else read[k] for k, v in written.items()}


@pytest.mark.parametrize("name", SECTIONS)
def test_a_run_written_before_the_objective_sections_loads_the_same(name, tmp_path):
    written = FLAT / f"{name}.yaml"
    config = load_config([str(written)])
    assert config.objective == ObjectiveConfig(name, **{name: SECTIONS[name]})
    rest = yaml.safe_load(written.read_text())
    del rest["objective"]
    # Every other setting as written; settings added since (e.g. data.shuffle_window) keep their defaults.
    assert _written_part(asdict(config), rest) == rest
    (tmp_path / "config.yaml").write_text(to_yaml(config))  # saved again, in the nested form
    assert load_config([str(tmp_path / "config.yaml")]) == config


def test_a_short_key_sets_the_objective_trained(tmp_path):
    def objective(*overrides):
        return load_config(
            [], [f"data.path={tmp_path}", f"output_dir={tmp_path}", "training.max_steps=1", *overrides]
        ).objective

    # Whichever comes first, objective.name or the short key; the later of two spellings wins.
    assert objective("objective.threshold=0.1", "objective.name=ul") == objective(
        "objective.name=ul", "objective.ul.threshold=0.1"
    )
    assert objective("objective.name=awr", "objective.awr.beta=2", "objective.beta=3").awr.beta == 3
    assert objective("objective.name=awr", "objective.beta=3", "objective.awr.beta=2").awr.beta == 2
    # Ignored by an objective without the setting, as before the sections, but for those that were refused.
    assert objective("objective.name=rwr", "objective.threshold=0.1") == objective("objective.name=rwr")
    with pytest.raises(ConfigError, match=r"objective.tag_every applies to conditional training only"):
        objective("objective.tag_every=4")
    # A section of another objective is kept for it (a study's overrides set every objective's).
    assert objective("objective.conditional.tag_every=4").conditional.tag_every == 4
    # Unknown keys, values of the wrong type and out of range name their key.
    for override, message in (
        ("objective.tyop=1", "key 'objective.tyop'"),
        ("objective.rwr.alpha=1", "key 'objective.rwr.alpha'"),
        ("objective.beta=ten", "key 'objective.awr.beta'"),
        ("objective.alpha=1.5", r"objective.awr.alpha must be in \[0, 1\], got 1.5"),
    ):
        with pytest.raises(ConfigError, match=message):
            objective("objective.name=awr", override)
    assert objective("objective.name=awr", "objective.awr.beta=1e-1").awr.beta == 0.1  # YAML 1.1: a string


def test_the_registry_names_the_sections_of_objective_config():
    sections = {f.name: f.type for f in fields(ObjectiveConfig) if f.name != "name"}
    assert sections == {name: settings.__name__ for name, settings in OBJECTIVES.items() if settings}
