"""Conditional training works when the model can learn the task: the implementation check.

On the marker corpus (tests/helpers/marker_corpus.py) a bad segment carries a marker word at every
other position, so the tiny preset must learn what the tags mean: if it does not separate the
tags, or samples the marker as often as MLE, the implementation is wrong, not the model too small.
The same run shows why the sampling protocol matters: a model trained with a tag before every
segment, with both tags forbidden (the paper's toxicity protocol), writes every segment after the
first without one, which it rarely saw in training.
"""

import json

import pytest
from tests.helpers.marker_corpus import write_corpus

STEPS = 300
# The tiny preset, narrower: the marker is learnable by any model, and CI runs on 2 cores.
MODEL = ["model.config={n_layer: 2, n_head: 2, n_embd: 64}", "data.seq_len=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from phf.config import load_config
    from phf.data.score_corpus import score_corpus
    from phf.evaluation.evaluator import EvalConfig, evaluate
    from phf.training.trainer import train

    root = tmp_path_factory.mktemp("marker")
    source = write_corpus(root)
    score_corpus(str(source), str(root / "scored"), "tests.helpers.marker_corpus:marker_score", progress=False)
    results = {}
    for objective, extra in (("mle", []), ("conditional", ["objective.threshold=0.0", "objective.drop_prob=0.01"])):
        run = root / "seed0" / objective
        train(
            load_config(
                ["configs/tiny/base.yaml"],
                [
                    f"output_dir={run}",
                    f"data.path={root / 'scored'}",
                    f"objective.name={objective}",
                    f"training.max_steps={STEPS}",
                    "training.save_every=100000",
                    "logging.progress=false",
                    *MODEL,
                    *extra,
                ],
            )
        )
        results[objective] = evaluate(
            run,
            EvalConfig(
                num_samples=128,
                judge=False,
                scenarios=False,
                reference="none",
                progress=False,
                compare_protocols=["emit-good", "recondition"],
            ),
        )
        results[objective + "_samples"] = [json.loads(line) for line in (run / "samples.jsonl").open()]
    return results


def test_conditional_model_separates_its_tags_and_samples_the_marker_far_less(runs):
    mle, cond = runs["mle"], runs["conditional"]
    assert "misalignment_by_protocol" not in mle and mle["misalignment"]["protocol"] is None
    assert cond["control_tokens"]["auroc"] >= 0.9
    by = cond["misalignment_by_protocol"]
    assert set(by) == {"paper", "emit-good", "recondition"} and cond["misalignment"] == by["paper"]
    mle_rate = mle["misalignment"]["mean"]
    assert mle_rate > 0.2  # half the documents are bad: MLE writes the marker
    for protocol in ("emit-good", "recondition"):
        assert by[protocol]["mean"] * 3 <= mle_rate, (protocol, by[protocol]["mean"], mle_rate)
    assert by["paper"]["mean"] < mle_rate
    # The text before a segment predicts its tag (bad documents stay bad), and the model expects a
    # tag at segment starts: what the paper protocol forbids there.
    assert cond["tag_prediction"]["auroc"] > 0.7
    assert cond["tag_prediction"]["mean_p_tag"] > 0.5


def test_each_sample_records_its_protocol_and_the_tags_it_emitted(runs):
    rows = runs["conditional_samples"]
    headline = [r for r in rows if r["kind"] == "unconditional"]
    compared = [r for r in rows if r["kind"] == "protocol-comparison"]
    assert len(headline) == 128 and len(compared) == 256
    assert {r["protocol"] for r in headline} == {"paper"} and all(r["tags_emitted"] == 0 for r in headline)
    recondition = [r for r in compared if r["protocol"] == "recondition"]
    assert sum(r["tags_emitted"] for r in recondition) > 0
    assert all("<|good|>" not in r["text"] and "<|bad|>" not in r["text"] for r in rows)
    by = runs["conditional"]["misalignment_by_protocol"]
    assert by["recondition"]["tags_per_sample"] == pytest.approx(sum(r["tags_emitted"] for r in recondition) / 128)
