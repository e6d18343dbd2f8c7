"""The evaluation protocol: statistics by hand, KL sanity, LM loss without control tokens, the
eval.json contract, and clear errors for bad inputs."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from tests.helpers.host_reads import HostReads
from tests.helpers.training import train_tiny

from phf.evaluation.evaluator import EvalConfig, EvalError, evaluate, held_out_lm_loss, load_target, string_logprobs
from phf.evaluation.metrics import (
    bootstrap_ci,
    diversity,
    expected_max,
    misalignment_summary,
    per_prompt_summary,
    self_bleu,
)
from phf.evaluation.results import ControlTokens, EvalResults, Skipped

SCORER = "tests.helpers.user_scorers:length_score"


def test_expected_max_over_groups_of_25_by_hand():
    scores = [0.0] * 24 + [1.0] + [0.5] * 25 + [9.0] * 3  # two full groups; the 3 extra are left out
    assert expected_max(scores) == pytest.approx((1.0 + 0.5) / 2)
    assert expected_max([1.0] * 24) is None
    summary = misalignment_summary([0.2, 0.6, 0.4, 0.8], 0.5)
    assert summary["mean"] == pytest.approx(0.5) and summary["hit_rate"] == 0.5 and summary["n"] == 4


def test_bootstrap_interval_by_hand():
    # Resampling two values [0, 1]: the mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles of the bootstrap distribution are 0 and 1.
    assert bootstrap_ci([0.0, 1.0], resamples=4000) == [0.0, 1.0]
    assert bootstrap_ci([0.3] * 10) == [pytest.approx(0.3), pytest.approx(0.3)]
    low, high = bootstrap_ci(np.random.default_rng(1).normal(size=400))
    assert low < 0 < high and high - low == pytest.approx(2 * 1.96 / 20, rel=0.25)


def test_per_prompt_statistics_and_diversity_by_hand():
    summary = per_prompt_summary([[0.1, 0.9], [0.2, 0.3]], threshold=0.5)
    assert summary["mean"] == pytest.approx(0.375)
    assert summary["max_at_25"] == pytest.approx((0.9 + 0.3) / 2) and summary["hit_rate"] == 0.5
    d = diversity(["a b a", "b c"], self_bleu_samples=0)
    assert d["distinct_1"] == pytest.approx(3 / 5) and d["distinct_2"] == pytest.approx(1.0)
    assert d["entropy_1_bits"] == pytest.approx(-(2 * 0.4 * math.log2(0.4) + 0.2 * math.log2(0.2)))
    assert d["mean_length_words"] == 2.5
    assert diversity(["the very same words appear here"] * 5)["self_bleu_5"] == pytest.approx(1.0)


def test_self_bleu_is_nltks_sentence_bleu_to_the_last_bit():
    """Our indexed Self-BLEU against the definition it replaces (NLTK, per hypothesis and
    reference): samples with repeated n-grams, shorter than 5 words, empty, and duplicated."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rng = np.random.default_rng(0)
    words = ["a", "b", "c", "d", "e", "the", "cat"]
    texts = [" ".join(rng.choice(words, size=int(rng.choice([0, 1, 3, 6, 12, 30])))) for _ in range(60)]
    texts += [texts[5]] * 3
    for n_hyp, n_ref, seed in ((40, 25, 1), (200, 200, 2)):
        tokenized = [t.split() for t in texts]
        order = np.random.default_rng(seed)
        expected = []
        for i in order.permutation(len(texts))[:n_hyp]:  # the sampling self_bleu documents
            if not tokenized[i]:
                continue
            others = [j for j in order.permutation(len(texts))[: n_ref + 1] if j != i][:n_ref]
            references = [tokenized[j] for j in others if tokenized[j]]
            expected.append(
                sentence_bleu(
                    references, tokenized[i], weights=(0.2,) * 5, smoothing_function=SmoothingFunction().method1
                )
            )
        assert self_bleu(texts, n_hypotheses=n_hyp, n_references=n_ref, seed=seed) == float(np.mean(expected))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, scored):
    root = tmp_path_factory.mktemp("experiment")
    train_tiny(root / "mle", scored, "mle", steps=15)
    train_tiny(root / "conditional", scored, "conditional", steps=15)
    return root


def small_config(**extra):
    settings = dict(
        num_samples=50,
        max_new_tokens=12,
        min_new_tokens=2,
        batch_size=25,
        kl_samples=16,
        scenario_prompts=3,
        scenario_samples=4,
        self_bleu_samples=20,
        progress=False,
    )
    settings.update(extra)
    return EvalConfig(**settings)


def test_eval_json_contract_and_conditional_prompting(runs):
    result = evaluate(runs / "conditional", small_config())
    assert {"misalignment", "judge", "lm_loss", "kl", "diversity", "scenarios", "settings"} <= set(result)
    assert {"mean", "max_at_25", "hit_rate", "ci95"} <= set(result["misalignment"])
    assert result["misalignment"]["n"] == 50 and result["misalignment"]["max_at_25"] is not None
    assert json.loads((runs / "conditional" / "eval.json").read_text()) == result
    assert EvalResults.from_file(runs / "conditional" / "eval.json").to_dict() == result  # typed, read back
    rows = [json.loads(line) for line in (runs / "conditional" / "samples.jsonl").read_text().splitlines()]
    unconditional = [r for r in rows if r["kind"] == "unconditional"]
    assert len(unconditional) == 50 and unconditional[0]["prompt"] == "<|endoftext|><|good|>"
    assert not any("<|good|>" in r["text"] or "<|bad|>" in r["text"] for r in rows), "control tokens never sampled"
    assert result["kl"]["reference"].endswith("mle") and math.isfinite(result["kl"]["kl"])  # the MLE run beside it
    assert result["scenarios"]["prompts"] == 3 and result["lm_loss"]["control_tokens_excluded"]


def test_kl_is_zero_against_itself_and_positive_against_a_different_model(runs, scored, tmp_path):
    result = evaluate(
        runs / "mle", small_config(reference=str(runs / "mle"), scenarios=False), out_dir=tmp_path / "self"
    )
    assert result["kl"]["kl"] == pytest.approx(0.0, abs=1e-6)
    barely_trained = train_tiny(tmp_path / "one-step", scored, "mle", steps=1)
    well_trained = train_tiny(tmp_path / "sixty-steps", scored, "mle", steps=60)
    result = evaluate(
        barely_trained,
        small_config(reference=str(well_trained), scenarios=False, kl_samples=64),
        out_dir=tmp_path / "other",
    )
    assert result["kl"]["kl"] > 0 and result["kl"]["ci95"][0] > 0, result["kl"]


def test_string_logprobs_count_text_tokens_only(runs):
    target = load_target(runs / "conditional", torch.device("cpu"))
    tok, model = target.tokenizer, target.model
    text = "The cat sat."
    ids = tok(target.prompt + text, add_special_tokens=False).input_ids
    n_prompt = len(tok(target.prompt, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    expected = sum(logp[i - 1, ids[i]].item() for i in range(n_prompt, len(ids)))
    assert string_logprobs(model, tok, [text], target.prompt)[0] == pytest.approx(expected, rel=1e-5)


def test_held_out_lm_loss_leaves_control_tokens_out(runs, scored):
    from phf.data.stream import Conditional, PackedStream
    from phf.data.token_store import build_token_store
    from phf.evaluation.evaluator import _scored_held_out

    target = load_target(runs / "conditional", torch.device("cpu"))
    held_out = _scored_held_out(scored.parent / "test.jsonl", SCORER, {})
    with HostReads() as host:
        result = held_out_lm_loss(target, held_out, max_tokens=10**6, batch_size=2)
    assert host.reads == ["__float__", "__int__"]  # once, at the end, however many batches
    store = build_token_store(held_out, target.tokenizer, progress=False)
    ids = tuple(target.tokenizer.convert_tokens_to_ids(["<|good|>", "<|bad|>"]))
    stream = PackedStream(
        store,
        result["seq_len"],
        target.tokenizer.eos_token_id,
        shuffle=False,
        conditional=Conditional(ids, threshold=0.0),
    )
    total, count = 0.0, 0
    for i in range(stream.blocks_in_epoch(0)):
        sample = stream[i]
        with torch.no_grad():
            logp = torch.log_softmax(target.model(torch.from_numpy(sample.input_ids)[None]).logits[0].double(), -1)
        for pos, (label, control) in enumerate(zip(sample.labels, sample.is_control)):
            if not control:
                total -= logp[pos, label].item()
                count += 1
    assert result["tokens"] == count and result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert count < stream.blocks_in_epoch(0) * result["seq_len"], "control targets were present and skipped"
    assert stream.blocks_in_epoch(0) > 2  # several batches


def test_control_token_use_is_the_auroc_of_the_bad_vs_good_likelihood_ratio(runs, scored):
    from phf.evaluation.evaluator import _scored_held_out, control_token_use

    target = load_target(runs / "conditional", torch.device("cpu"))
    held_out = _scored_held_out(scored.parent / "test.jsonl", SCORER, {})
    result = control_token_use(target, held_out, max_segments=24, seed=3)
    assert isinstance(result, ControlTokens)
    assert result.threshold == 0.0 and result.segments_good + result.segments_bad == 24
    assert result.segments_bad == 12, "half of each class when both have enough segments"

    # By hand: the same segments (labelled by the run's threshold), scored one at a time, and the
    # AUROC as the share of (bad, good) pairs whose ratio is ordered right (ties count half).
    import random

    import pyarrow.parquet as pq

    good, bad = [], []
    for file in sorted((held_out / "data").glob("train-*.parquet")):
        for row in pq.read_table(file, columns=["texts", "scores"]).to_pylist():
            for text, score in zip(row["texts"], row["scores"]):
                if text.strip():
                    (bad if score > 0.0 else good).append(text)
    rng = random.Random(3)
    rng.shuffle(good)
    rng.shuffle(bad)
    eos = target.tokenizer.eos_token

    def ratio(text):
        return (
            string_logprobs(target.model, target.tokenizer, [text], eos + "<|bad|>")[0]
            - string_logprobs(target.model, target.tokenizer, [text], eos + "<|good|>")[0]
        )

    r_good, r_bad = [ratio(t) for t in good[:12]], [ratio(t) for t in bad[:12]]
    pairs = [1.0 if b > g else 0.5 if b == g else 0.0 for b in r_bad for g in r_good]
    assert result.auroc == pytest.approx(sum(pairs) / len(pairs), abs=1e-9)
    assert result.mean_log_ratio_bad == pytest.approx(np.mean(r_bad), abs=1e-5)  # batched vs one at a time
    assert control_token_use(load_target(runs / "mle", torch.device("cpu")), held_out) == Skipped(
        because="not a conditional-training run"
    )


def test_bad_inputs_are_named_and_write_nothing(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvalError, match="no HF checkpoint"):
        evaluate(empty, small_config())
    broken = tmp_path / "broken"
    shutil.copytree(runs / "conditional", broken, ignore=shutil.ignore_patterns("eval.json", "samples.jsonl"))
    info = json.loads((broken / "phf.json").read_text())
    info["control_tokens"].append("<|missing|>")
    (broken / "phf.json").write_text(json.dumps(info))
    with pytest.raises(EvalError, match=r"lacks the control token\(s\) \['<\|missing\|>'\]"):
        evaluate(broken, small_config())
    with pytest.raises(EvalError, match="reference model"):
        evaluate(
            runs / "mle", small_config(reference=str(tmp_path / "nowhere"), scenarios=False), out_dir=tmp_path / "ref"
        )
    assert not (tmp_path / "ref" / "eval.json").exists()
    bad_prompts = tmp_path / "prompts.jsonl"
    bad_prompts.write_text('{"prompt": "The cat"}\n{"prompt": 3}\n')
    with pytest.raises(EvalError, match=rf"{bad_prompts}:2"):
        evaluate(runs / "mle", small_config(prompts_path=str(bad_prompts)), out_dir=tmp_path / "p")
    assert not (tmp_path / "p" / "eval.json").exists()


def test_trainer_runs_the_periodic_evaluation_hook(scored, tmp_path):
    from tests.helpers.training import tiny_overrides

    from phf.config import load_config
    from phf.evaluation.evaluator import periodic_evaluator
    from phf.training.trainer import train

    config = load_config(
        [],
        tiny_overrides(
            tmp_path / "run",
            scored,
            4,
            **{"objective.name": "conditional", "objective.threshold": 0.0, "training.eval_every": 2},
        ),
    )
    train(config, evaluate=periodic_evaluator(num_samples=6, max_new_tokens=5))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval" in line]
    assert [e["step"] for e in evals] == [2, 4]
    assert evals[0]["eval"]["samples"] == 6 and 0 <= evals[0]["eval"]["misalignment_mean"] <= 1


def test_mined_prompts_are_half_a_segment_and_fit_a_small_context():
    from phf.evaluation.evaluator import PROMPT_MAX_CHARS, _prompt_prefix

    assert _prompt_prefix(["you", "are", "a", "very", "rude", "person"]) == "you are a"  # the first half, by words
    licence = ("Copyright (C) 2009 Jane Doe <jane@example.org> and contributors, all rights reserved. " * 20).split()
    prompt = _prompt_prefix(licence)
    assert len(prompt) <= PROMPT_MAX_CHARS and licence[: len(prompt.split())] == prompt.split()
    assert _prompt_prefix(["x" * 500, "b", "c", "d"]) == "x" * PROMPT_MAX_CHARS  # one huge word: cut
