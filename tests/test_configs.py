"""Every YAML under configs/ loads and validates: a preset that a key rename broke fails here."""

from pathlib import Path

import pytest

from phf.config import load_config
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
