"""``phf experiment``: a whole study, end to end, resumable.

A study names tasks, objectives (default all six), seeds, a training preset and evaluation
settings. For every arm it runs corpus -> score -> train -> eval (-> red team), skipping whatever is
already finished, so rerunning a killed study continues it; then it writes the report. The
optional pretrain-then-finetune arm is the paper's baseline (Figure 1): MLE to the half-way point,
then each feedback objective on the rest of the stream.

Layout: ``<out>/<task>/seed<seed>/<arm>/`` per run (so the ``mle`` run sits beside the others and
serves as their KL reference), ``<out>/<task>/corpus`` and ``<out>/<task>/scored``, the report in
``<out>/report/`` and every table number in ``<out>/results.json``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from phf.config import HUMANEVAL_PROBLEMS, OBJECTIVES, PROTOCOLS, ConfigError, EvalConfig, RedTeamConfig
from phf.errors import PhfError
from phf.io.atomic import atomic_path
from phf.io.integrity import remove_stale_temps

if TYPE_CHECKING:
    from phf.study.workers import Slot

TASK_SCORERS = {"toxicity": "toxicity", "pii": "pii", "pep8": "pep8"}


@dataclass
class CorpusSettings:
    max_mb: float | None = None  # embedded corpus size (default: the task's)
    seed: int = 0
    test_fraction: float = 0.1
    path: str | None = None  # your own JSONL/Parquet/HF dataset instead of the embedded corpus
    test_path: str | None = None  # its held-out split (JSONL), for evaluation
    num_proc: int = 2


@dataclass
class FinetuneSettings:
    enabled: bool = False
    objectives: list[str] = field(default_factory=lambda: ["conditional"])
    fraction: float = 0.5  # where the MLE run hands over (the paper: half of 3.3B tokens)


@dataclass
class EvalSettings:
    """The study's eval section: ``phf eval``'s defaults (EvalConfig), and when to estimate during training."""

    num_samples: int = EvalConfig.num_samples
    kl_samples: int = EvalConfig.kl_samples
    max_new_tokens: int | None = EvalConfig.max_new_tokens
    scenario_prompts: int = EvalConfig.scenario_prompts
    scenario_samples: int = EvalConfig.scenario_samples
    batch_size: int = EvalConfig.batch_size
    protocol: str = EvalConfig.protocol  # how conditional models are sampled (phf.config.PROTOCOLS)
    compare_protocols: list[str] = field(default_factory=list)  # conditional arms: also sampled under these
    humaneval: int = EvalConfig.humaneval  # HumanEval problems per arm (0: off, 164: all)
    humaneval_samples: int = EvalConfig.humaneval_samples
    every: int = 0  # periodic misalignment estimate during training, every N steps (0: off)
    every_samples: int = 64


@dataclass
class RedTeamSettings:
    """The study's redteam section: ``phf redteam``'s defaults (RedTeamConfig), off unless enabled."""

    enabled: bool = False
    rounds: int = RedTeamConfig.rounds
    trials: int = RedTeamConfig.trials
    completions: int = RedTeamConfig.completions
    continuations: int = RedTeamConfig.continuations
    red_lm: str = RedTeamConfig.red_lm
    seeds: list[int] = field(default_factory=list)  # red-team only the arms of these seeds (empty: every seed)

    def covers(self, seed: int) -> bool:
        return self.enabled and (not self.seeds or seed in self.seeds)


@dataclass
class StudyConfig:
    """A study (``phf experiment``): tasks x objectives x seeds, and how to build, train, evaluate and report them."""

    name: str = "study"
    out: str = "runs/study"
    tasks: list[str] = field(default_factory=lambda: ["toxicity"])
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    seeds: list[int] = field(default_factory=lambda: [42])
    preset: str = "configs/tiny"  # training configs: <preset>/<task>/<objective>.yaml
    overrides: list[str] = field(default_factory=list)  # key=value for every training run
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    redteam: RedTeamSettings = field(default_factory=RedTeamSettings)
    devices: list[str] = field(default_factory=list)  # GPUs for one arm each (empty: all visible, else CPU)


class ExperimentError(PhfError, RuntimeError):
    """The study cannot run as configured; the message names the setting."""


def load_study(path: str, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """A study YAML with ``key=value`` overrides, validated; errors name the key."""
    merged = OmegaConf.structured(StudyConfig)
    # One source at a time, so an error names the file or the override it comes from.
    for source, load in [(path, lambda: OmegaConf.load(path))] + [
        (f"{path}: override {o!r}", lambda o=o: OmegaConf.from_dotlist([o])) for o in overrides
    ]:
        try:
            merged = OmegaConf.merge(merged, load())
        except FileNotFoundError:
            raise ConfigError(f"study config {path} does not exist") from None
        except (OmegaConfBaseException, TypeError, ValueError) as exc:  # TypeError: a dict where a list goes
            key = getattr(exc, "full_key", None)
            raise ConfigError(
                f"{source}: {'key ' + repr(key) + ': ' if key else ''}{str(exc).splitlines()[0]}"
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    study = OmegaConf.to_object(merged)
    assert isinstance(study, StudyConfig)  # merged onto the StudyConfig schema
    for task in study.tasks:
        if not isinstance(task, str) or task not in TASK_SCORERS:  # OmegaConf lets [[]] into a list[str]
            raise ConfigError(f"{path}: unknown task {task!r}; choose from {sorted(TASK_SCORERS)}")
    for objective in study.objectives + study.finetune.objectives:
        if objective not in OBJECTIVES:
            raise ConfigError(f"{path}: unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    if study.finetune.enabled and "mle" not in study.objectives:
        raise ConfigError(f"{path}: the finetune arm continues the mle run: add mle to objectives")
    if not 0 < study.finetune.fraction < 1:
        raise ConfigError(f"{path}: finetune.fraction must be in (0, 1)")
    for protocol in [study.eval.protocol, *study.eval.compare_protocols]:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"{path}: eval protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    if not 0 <= study.eval.humaneval <= HUMANEVAL_PROBLEMS or study.eval.humaneval_samples < 1:
        raise ConfigError(
            f"{path}: eval.humaneval must be 0 (off) to {HUMANEVAL_PROBLEMS} and eval.humaneval_samples at least 1"
        )
    return study


@dataclass
class Arm:
    task: str
    seed: int
    name: str  # objective, or "finetune-<objective>"
    objective: str
    run_dir: Path
    overrides: list[str]


class Progress:
    """Prints which stage runs and an estimate of what is left (mean duration per stage kind)."""

    def __init__(self, stages: list[tuple[str, str]]):
        self.stages, self.done = stages, 0
        self.durations: dict[str, list[float]] = {}
        self.started = time.perf_counter()

    def start(self, kind: str, label: str) -> float:
        remaining = self.stages[self.done :]
        known = {k: sum(v) / len(v) for k, v in self.durations.items()}
        fallback = sum(known.values()) / len(known) if known else None
        eta = sum(known.get(k, fallback or 0) for k, _ in remaining) if fallback is not None else None
        left = f", about {eta / 60:.0f} min left" if eta else ""
        print(
            f"\n[{self.done + 1}/{len(self.stages)}] {label} "
            f"({(time.perf_counter() - self.started) / 60:.1f} min so far{left})",
            flush=True,
        )
        return time.perf_counter()

    def finish(self, kind: str, started: float, skipped: bool = False) -> None:
        if not skipped:
            self.durations.setdefault(kind, []).append(time.perf_counter() - started)
        self.done += 1


def _arms(study: StudyConfig, out: Path) -> list[Arm]:
    arms = []
    for task in study.tasks:
        for seed in study.seeds:
            base = out / task / f"seed{seed}"
            common = [f"training.seed={seed}", f"data.path={out / task / 'scored'}"] + list(study.overrides)
            if study.eval.every:
                common.append(f"training.eval_every={study.eval.every}")
            # mle first: it is the KL reference of every arm of its seed, found when they are evaluated.
            for objective in sorted(study.objectives, key=lambda o: o != "mle"):
                arms.append(Arm(task, seed, objective, objective, base / objective, list(common)))
            if study.finetune.enabled:
                for objective in study.finetune.objectives:
                    arms.append(
                        Arm(
                            task, seed, f"finetune-{objective}", objective, base / f"finetune-{objective}", list(common)
                        )
                    )
    return arms


def _preset_file(study: StudyConfig, task: str, objective: str) -> str:
    path = Path(study.preset) / task / f"{objective}.yaml"
    if not path.exists():
        raise ExperimentError(f"preset {study.preset!r} has no {path} (objective {objective}, task {task})")
    return str(path)


def _finished(run_dir: Path) -> bool:
    from phf.training.checkpoint import STATE_FILE

    return (run_dir / STATE_FILE).exists()  # save_final writes it last


def _train(study: StudyConfig, arm: Arm, arms: list[Arm], bars: bool = True) -> None:
    from phf.config import load_config
    from phf.evaluation.evaluator import periodic_evaluator
    from phf.training.trainer import Trainer, total_steps

    files = [_preset_file(study, arm.task, arm.objective)]
    overrides = arm.overrides + [f"output_dir={arm.run_dir}", f"logging.progress={str(bars).lower()}"]
    if arm.name.startswith("finetune-"):
        mle = next(a for a in arms if a.task == arm.task and a.seed == arm.seed and a.name == "mle")
        total = total_steps(
            load_config([_preset_file(study, arm.task, "mle")], mle.overrides + [f"output_dir={mle.run_dir}"])
        )
        half = max(1, int(total * study.finetune.fraction))
        handover = mle.run_dir / f"step-{half}"
        if not (handover / "config.json").exists():
            raise ExperimentError(f"{handover} is missing: the mle run must export step {half} (rerun it)")
        overrides += [f"model.init={handover}", f"data.continue_from={handover}", f"training.max_steps={total - half}"]
    elif arm.name == "mle" and study.finetune.enabled:
        total = total_steps(load_config(files, overrides))
        overrides.append(f"training.export_steps=[{max(1, int(total * study.finetune.fraction))}]")
    config = load_config(files, overrides)
    evaluate = periodic_evaluator(num_samples=study.eval.every_samples, seed=arm.seed) if study.eval.every else None
    # The study owns its run directories: whatever a killed run left is resumed (or, with no intact
    # checkpoint, started again).
    Trainer(config, resume=True, evaluate=evaluate).train()


def _evaluate(study: StudyConfig, arm: Arm, bars: bool = True) -> None:
    from phf.evaluation.evaluator import evaluate

    e = study.eval
    config = EvalConfig(
        num_samples=e.num_samples,
        kl_samples=e.kl_samples,
        max_new_tokens=e.max_new_tokens,
        scenario_prompts=e.scenario_prompts,
        scenario_samples=e.scenario_samples,
        batch_size=e.batch_size,
        seed=arm.seed,
        test_path=study.corpus.test_path,
        protocol=e.protocol,
        compare_protocols=list(e.compare_protocols),
        progress=bars,
        humaneval=e.humaneval,
        humaneval_samples=e.humaneval_samples,
    )
    evaluate(arm.run_dir, config)


def _redteam(study: StudyConfig, arm: Arm, bars: bool = True) -> None:
    from phf.evaluation.evaluator import redteam

    r = study.redteam
    redteam(
        arm.run_dir,
        RedTeamConfig(
            rounds=r.rounds,
            trials=r.trials,
            completions=r.completions,
            continuations=r.continuations,
            red_lm=r.red_lm,
            seed=arm.seed,
            test_path=study.corpus.test_path,
            progress=bars,
        ),
    )


def _prepare_data(study: StudyConfig, task: str, out: Path, engine: str = "local", bars: bool = True) -> None:
    from phf.data.corpora.build import build_corpus
    from phf.data.score_corpus import score_corpus

    corpus_dir, scored_dir = out / task / "corpus", out / task / "scored"
    source = study.corpus.path
    if source is None:
        if not (corpus_dir / "manifest.json").exists():
            build_corpus(
                task,
                corpus_dir,
                max_mb=study.corpus.max_mb,
                seed=study.corpus.seed,
                test_fraction=study.corpus.test_fraction,
                progress=bars,
            )
        source = str(corpus_dir / "train.jsonl")
    score_corpus(
        source, str(scored_dir), TASK_SCORERS[task], num_proc=study.corpus.num_proc, engine=engine, progress=bars
    )


def arm_label(arm: Arm) -> str:
    """The arm as ``--only`` names it: TASK/seedS/ARM."""
    return f"{arm.task}/seed{arm.seed}/{arm.name}"


def arm_finished(study: StudyConfig, arm: Arm) -> bool:
    """Every stage of the arm is done: evaluated, and red-teamed where the study red-teams its seed."""
    done = (arm.run_dir / "eval.json").exists()
    return done and (not study.redteam.covers(arm.seed) or (arm.run_dir / "redteam.json").exists())


def _arm_stages(study: StudyConfig, arm: Arm) -> list[tuple[str, str]]:
    return [("train", arm.name), ("eval", arm.name)] + (
        [("redteam", arm.name)] if study.redteam.covers(arm.seed) else []
    )


def run_arm(study: StudyConfig, arm: Arm, arms: list[Arm], progress: Progress | None = None, bars: bool = True) -> None:
    """Train, evaluate (and red-team) one arm, skipping the stages already finished; ``bars``: progress bars."""
    progress = progress or Progress(_arm_stages(study, arm))
    label = arm_label(arm)
    started = progress.start("train", f"{label}: training")
    done = _finished(arm.run_dir)
    if not done:
        _train(study, arm, arms, bars)
    progress.finish("train", started, skipped=done)
    started = progress.start("eval", f"{label}: evaluation")
    done = (arm.run_dir / "eval.json").exists()
    if not done:
        _evaluate(study, arm, bars)
    progress.finish("eval", started, skipped=done)
    if study.redteam.covers(arm.seed):
        started = progress.start("redteam", f"{label}: red teaming")
        done = (arm.run_dir / "redteam.json").exists()
        if not done:
            _redteam(study, arm, bars)
        progress.finish("redteam", started, skipped=done)


def run_experiment(
    study_path: str,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    only: str | None = None,
    report: bool = True,
    engine: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """``phf experiment``: every arm of the study end to end, skipping what is finished, then the
    report. ``engine="ray"`` runs each arm as a Ray task (and scores on Ray) on the cluster at
    ``ray_address``, else on a local Ray instance. ``workers``: on a machine without GPUs, arms
    run that many at a time, each process on its share of the cores (:mod:`phf.study.workers`).
    ``progress=False`` draws no progress bars on this machine (the stage lines still print)."""
    from phf.data.score_corpus import ENGINES
    from phf.study.workers import cpu_slots

    if engine not in ENGINES:
        raise ExperimentError(f"--engine {engine!r}: choose {' or '.join(ENGINES)}")
    if workers != 1 and (engine != "local" or only):
        raise ExperimentError(
            f"--workers {workers}: runs several arms at once on this machine; not with "
            + ("--engine ray (Ray places the arms)" if engine != "local" else f"--only {only!r} (one arm)")
        )
    cpu = cpu_slots(workers)  # a bad --workers is refused before anything is written
    if engine == "ray":
        from phf.io.ray import connected

        with connected(ray_address):  # one Ray session for the scoring and the arms
            return _run_experiment(study_path, overrides, only, report, engine, progress, cpu)
    return _run_experiment(study_path, overrides, only, report, engine, progress, cpu)


def _run_experiment(
    study_path: str, overrides, only: str | None, report: bool, engine: str, bars: bool, cpu: list[Slot]
) -> dict[str, Any]:
    """``cpu``: the --workers shares of the cores (one share: arms one at a time, in this process)."""
    from phf.study.workers import gpu_devices, gpu_slots, run_parallel

    study = load_study(study_path, overrides)
    out = Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(study)))
    arms = _arms(study, out)
    if only:
        arms_run = [a for a in arms if arm_label(a) == only]
        if not arms_run:
            raise ExperimentError(f"--only {only!r} names no arm of {study_path}")
    else:
        arms_run = arms

    devices = gpu_devices(study) if not only and engine == "local" else []
    slots = gpu_slots(devices) if len(devices) >= 2 else []
    if devices and len(cpu) > 1:
        print(f"--workers {len(cpu)} is for CPU runs: {len(devices)} GPU(s) here, one arm on each at a time")
    elif len(cpu) > 1:
        slots = cpu
    stages = [("data", t) for t in study.tasks if only is None]
    if not slots and engine == "local":
        for arm in arms_run:
            stages += _arm_stages(study, arm)
    progress = Progress(stages)

    for task in study.tasks:
        if only is None or only.startswith(f"{task}/"):
            started = progress.start("data", f"{task}: corpus and scores") if only is None else None
            _prepare_data(study, task, out, engine, bars)
            if started is not None:
                progress.finish("data", started)

    if engine == "ray":
        from phf.study.ray_arms import run_arms

        run_arms(study, arms_run, arms)
    elif slots:
        run_parallel(study, study_path, list(overrides), arms_run, slots, out)
    else:
        for arm in arms_run:
            run_arm(study, arm, arms, progress, bars)

    if not report:
        return {"arms": [str(a.run_dir) for a in arms_run]}
    return write_report(study, arms, out)


def _arm_name(arm: Arm, study: StudyConfig) -> str:
    parts = ([arm.task] if len(study.tasks) > 1 else []) + ([f"seed{arm.seed}"] if len(study.seeds) > 1 else [])
    return "/".join(parts + [arm.name])


def write_report(study: StudyConfig, arms: list[Arm], out: Path) -> dict[str, Any]:
    """The study's report over all its arms, with results.json copied beside the runs."""
    from phf.study.report import build_report

    names = [_arm_name(a, study) for a in arms]
    # missing_ok: with --only, or after a failed arm, some arms have not run yet.
    result = build_report([a.run_dir for a in arms], out / "report", title=study.name, names=names, missing_ok=True)
    remove_stale_temps(out)
    with atomic_path(out / "results.json") as tmp:  # a kill while copying leaves no half results.json
        shutil.copyfile(out / "report" / "results.json", tmp)
    print(f"\nreport: {out / 'report' / 'report.html'} (and report.md); numbers: {out / 'results.json'}")
    return result
