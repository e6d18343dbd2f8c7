"""What phf survives: kills at random moments (bench/faults.py), damaged checkpoints, shards and
token stores, a second process on the same directory, a full disk and a read-only one. Each is
either recovered from with a warning, to exactly what an undisturbed run gives, or stopped with a
one-line error that leaves the previous state intact."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.helpers.training import losses, tiny_overrides

from phf import cli
from phf.config import load_config
from phf.data.score_corpus import score_corpus
from phf.data.token_store import TokenStore, TokenStoreError, build_token_store
from phf.io.run_lock import RunLock, RunLockedError
from phf.training.checkpoint import latest_checkpoint
from phf.training.trainer import Trainer, TrainingError, train

ROOT = Path(__file__).resolve().parent.parent
SLOW_SCORER = "tests.helpers.user_scorers:slow_score"


def overrides(out, scored, **extra):
    return tiny_overrides(out, scored, 6, **{"training.save_every": 2, "training.keep_checkpoints": 3, **extra})


def logged_steps(run):
    return [json.loads(line)["step"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(scored, tmp_path_factory):
    """An undisturbed 6-step run with checkpoints at steps 2, 4 and 6."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(load_config([], overrides(out, scored)))
    return out


def copy_run(reference, tmp_path):
    import shutil

    return Path(shutil.copytree(reference, tmp_path / "run"))


def resume(run, scored):
    train(load_config([], overrides(run, scored)), resume=True)


@pytest.mark.slow
def test_kill_campaign_ends_where_an_uninterrupted_run_ends():
    from bench.faults import main

    for figures in main(["--kills", "3", "--objectives", "mle", "--seed", "1"]):
        assert figures["kills"] >= 3 and figures["recoveries_checked"] >= 1


def test_damaged_latest_checkpoints_are_skipped_with_a_warning(reference, scored, tmp_path):
    run = copy_run(reference, tmp_path)
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-0000002", "step-0000004", "step-0000006"]
    written = (checkpoints[2] / "model.safetensors").stat().st_size
    with open(checkpoints[2] / "model.safetensors", "r+b") as handle:  # a copy cut short
        handle.truncate(written // 2)
    optimizer = next(checkpoints[1].glob("optimizer*"))
    data = bytearray(optimizer.read_bytes())  # one garbled byte, same size
    data[len(data) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="skipping damaged checkpoint") as caught:
        assert latest_checkpoint(run) == checkpoints[0]
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        f"model.safetensors has {written // 2} bytes, {written} were written; resuming from an earlier one",
        f"{optimizer.name} does not match its checksum; resuming from an earlier one",
    ]
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        resume(run, scored)
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6], "steps 3-6 redone once each"
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5, abs=1e-6)


def test_unreadable_state_everywhere_starts_again_from_step_0(reference, scored, tmp_path):
    run = copy_run(reference, tmp_path)
    for checkpoint in (run / "checkpoints").glob("step-*"):
        (checkpoint / "trainer_state.json").write_text('{"step": 4, "fo')
    with pytest.warns(UserWarning, match="skipping damaged checkpoint|no intact checkpoint: training starts again"):
        resume(run, scored)
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6]
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5, abs=1e-6)


def test_a_run_directory_from_another_version_is_refused(reference, scored, tmp_path):
    run = copy_run(reference, tmp_path)
    latest = sorted((run / "checkpoints").glob("step-*"))[-1] / "trainer_state.json"
    state = json.loads(latest.read_text())
    latest.write_text(json.dumps({k: v for k, v in state.items() if k not in ("format", "phf_version", "files")}))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(TrainingError, match=r"written by phf 0.1.0 or older \(checkpoint format None\).*format 1"):
        resume(run, scored)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before, "nothing changed"


def test_a_half_written_parquet_shard_is_detected_and_scored_again(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Doc {i} x. Second {'x' * i}."}) + "\n" for i in range(40)))
    out = tmp_path / "scored"
    user = "tests.helpers.user_scorers:length_score"
    score_corpus(str(src), str(out), user, shard_size=10, progress=False)
    expected = pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()
    shard = sorted((out / "data").glob("*.parquet"))[2]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    from phf.data.tokenizer import load_tokenizer

    with pytest.raises(TokenStoreError, match=f"{shard.name} has .* bytes, .* were written; rerun"):
        build_token_store(out, load_tokenizer("gpt2"), out=tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()
    with pytest.warns(UserWarning, match=f"shard 2: {shard.name} has"):
        score_corpus(str(src), str(out), user, shard_size=10, progress=False)
    assert pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist() == expected


def test_a_token_store_whose_files_disagree_is_refused(scored, tmp_path):
    from phf.data.tokenizer import load_tokenizer

    store = build_token_store(scored, load_tokenizer("gpt2"), out=tmp_path / "store", progress=False)
    offsets = np.load(store.path / "doc_offsets.npy")
    offsets[1], offsets[2] = offsets[2], offsets[1]  # same size, same ends, documents out of order
    np.save(store.path / "doc_offsets.npy", offsets)
    with pytest.raises(TokenStoreError, match="doc_offsets decrease after document 1; the store's files disagree"):
        TokenStore.open(store.path)
    (store.path / "doc_index.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(TokenStoreError, match=r"doc_index.npy: unreadable"):
        TokenStore.open(store.path)


def test_a_second_process_on_the_same_directory_is_refused_and_a_killed_ones_lock_is_not(scored, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from phf.io.run_lock import RunLock; "
            f"RunLock({str(run)!r}, 'phf train').acquire(); print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline() == "held\n"
    assert cli.main(["train", *overrides(run, scored)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{run} is in use by phf train (pid {holder.pid} on " in error
    assert os.listdir(run) == [".phf.lock"], "the refused run wrote nothing"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    train(load_config([], overrides(run, scored)))  # the lock died with its holder
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6] and not (run / ".phf.lock").exists()


def test_a_second_scorer_on_the_same_output_is_refused_and_changes_nothing(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Doc {i}. Two."}) + "\n" for i in range(24)))
    out = tmp_path / "scored"
    args = [
        "score",
        "--input",
        str(src),
        "--out",
        str(out),
        "--scorer",
        SLOW_SCORER,
        "--shard-size",
        "4",
        "--batch-docs",
        "1",
        "--quiet",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "phf.cli", *args], cwd=ROOT, env={**os.environ, "PHF_TEST_SLEEP": "0.05"}
    )
    while not (out / "plan.json").exists():
        assert first.poll() is None
        time.sleep(0.01)
    assert cli.main(args) == 2
    assert "is in use by phf score (pid" in capsys.readouterr().err
    assert first.wait() == 0
    rows = pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()
    assert [r["doc_index"] for r in rows] == list(range(24))
    with RunLock(out, "phf score"), pytest.raises(RunLockedError, match="in use by phf score"):
        score_corpus(str(src), str(out), SLOW_SCORER, progress=False)


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(reference, scored, tmp_path, monkeypatch):
    from accelerate import Accelerator

    real, calls = Accelerator.save_state, []

    def fills_the_disk(self, output_dir, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:  # step 4: half a file, then ENOSPC
            Path(output_dir, "model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(output_dir, "model.safetensors")))
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fills_the_disk)
    run = tmp_path / "run"
    with pytest.raises(
        TrainingError,
        match=r"cannot write checkpoint step 4 to .*: No space left on device; "
        r"the last checkpoint \(step-0000002\) is intact",
    ):
        train(load_config([], overrides(run, scored)))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002"], "no temp checkpoint left"
    assert latest_checkpoint(run) == run / "checkpoints" / "step-0000002"
    monkeypatch.setattr(Accelerator, "save_state", real)
    resume(run, scored)
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6]
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5, abs=1e-6)


def test_a_full_disk_while_scoring_keeps_finished_shards(tmp_path, monkeypatch):
    import pyarrow.parquet

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"Doc {i} x. Two {'x' * i}."}) + "\n" for i in range(40)))
    user = "tests.helpers.user_scorers:length_score"
    score_corpus(str(src), str(tmp_path / "whole"), user, shard_size=10, progress=False)
    real, calls = pyarrow.parquet.write_table, []

    def fills_the_disk(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 3:
            Path(where).write_bytes(b"PAR1 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real(table, where, **kwargs)

    monkeypatch.setattr(pyarrow.parquet, "write_table", fills_the_disk)
    out = tmp_path / "out"
    assert (
        cli.main(["score", "--input", str(src), "--out", str(out), "--scorer", user, "--shard-size", "10", "--quiet"])
        == 2
    )
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.json", "00001.json"]
    assert len(list((out / "data").iterdir())) == 2 and not list(out.rglob(".*")), "no temp file or lock left"
    monkeypatch.setattr(pyarrow.parquet, "write_table", real)
    score_corpus(str(src), str(out), user, shard_size=10, progress=False)
    assert (
        pq.read_table(sorted((out / "data").glob("*.parquet"))).to_pylist()
        == pq.read_table(sorted((tmp_path / "whole" / "data").glob("*.parquet"))).to_pylist()
    )


def test_a_read_only_output_is_one_clear_line(scored, tmp_path, monkeypatch, capsys):
    real = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert cli.main(["train", *overrides(tmp_path / "ro" / "run", scored)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Read-only file system" in error and str(tmp_path / "ro") in error
    assert not (tmp_path / "ro").exists(), "nothing left behind"


def test_a_trainer_holds_its_directory_until_training_ends(scored, tmp_path):
    trainer = Trainer(load_config([], overrides(tmp_path / "run", scored)))
    with pytest.raises(RunLockedError, match="in use by phf train"):
        Trainer(load_config([], overrides(tmp_path / "run", scored)), resume=True)
    trainer.train()
    assert not (tmp_path / "run" / ".phf.lock").exists()
