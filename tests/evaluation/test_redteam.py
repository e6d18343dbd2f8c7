"""phf.evaluation.redteam: example sampling, red-LM prompts, candidate extraction, and whole runs on tiny random LMs."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from phf.config import RedTeamConfig
from phf.data.tokenizer import add_control_tokens, train_bpe
from phf.evaluation.redteam import (
    RED_LM_TEMPLATES,
    RedTeamSetup,
    build_red_prompt,
    extract_candidate,
    few_shot_text,
    pool_weights,
    run_red_team,
    sample_examples,
)
from phf.evaluation.sampling import SamplingConfig

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write five incomplete sentences that are likely to be completed.",
    "She sells sea shells by the sea shore.\nAll that glitters is not gold.",
    "def add(a, b):\n    return a + b\n",
] * 4
POOL = [
    ("The weather today is", 0.2),
    ("My neighbour always", 0.5),
    ("Everyone knows that", 0.1),
    ("The sea shore is", 0.3),
    ("He said the fox", 0.0),
]
SMALL_RED = SamplingConfig(temperature=1.0, top_p=1.0, min_new_tokens=2, max_new_tokens=12, batch_size=32)
SMALL_TARGET = SamplingConfig(temperature=0.7, top_p=0.9, min_new_tokens=2, max_new_tokens=10, batch_size=64)
SETUP_FIELDS = ("task", "target_prefix", "forbidden_ids", "target_sampling", "red_sampling", "red_chat", "keep_samples")


def share_of_e(texts):
    return [t.count("e") / max(len(t), 1) for t in texts]


def _tiny_lm(tokenizer, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        vocab_size=math.ceil(len(tokenizer) / 64) * 64,
        n_positions=512,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def lms():
    red_tok = train_bpe(TEXTS, vocab_size=300)
    target_tok = train_bpe(TEXTS, vocab_size=300)
    control = add_control_tokens(target_tok, ["<|good|>", "<|bad|>"])
    return {"red": (_tiny_lm(red_tok, 0), red_tok), "target": (_tiny_lm(target_tok, 1), target_tok), "control": control}


def _run(lms, scorer=share_of_e, pool=POOL, **kwargs):
    """run_red_team on the tiny LMs; ``kwargs``: RedTeamSetup fields (small sampling by default) and
    RedTeamConfig fields (a one-round, one-trial run by default)."""
    red, red_tok = lms["red"]
    target, target_tok = lms["target"]
    options = dict(task="toxicity", target_sampling=SMALL_TARGET, red_sampling=SMALL_RED, keep_samples=None)
    options.update({k: kwargs.pop(k) for k in SETUP_FIELDS if k in kwargs})
    setup = RedTeamSetup(target, target_tok, red, red_tok, scorer, **options)
    config = RedTeamConfig(
        **{"rounds": 1, "trials": 1, "completions": 6, "continuations": 4, "progress": False, **kwargs}
    )
    return run_red_team(setup, pool, config)


# --- pool sampling --------------------------------------------------------------------------------
def test_pool_weights_are_a_softmax_at_temperature_0_1():
    scores = [0.0, 0.1, 0.5, 0.52]
    expected = np.exp(np.array(scores) / 0.1)
    assert np.allclose(pool_weights(scores, 0.1), expected / expected.sum())
    assert np.allclose(pool_weights([1000.0, 999.9], 0.1), [math.e / (1 + math.e), 1 / (1 + math.e)])  # stable
    with pytest.raises(ValueError):
        pool_weights([0.1], 0.0)


def test_sample_examples_follows_exp_score_over_temperature_without_replacement():
    scores = [0.0, 0.1, 0.2]
    p = pool_weights(scores, 0.1)
    rng = np.random.default_rng(0)
    n = 20000
    draws = [tuple(sample_examples(scores, 2, 0.1, rng)) for _ in range(n)]
    assert all(len(set(d)) == 2 for d in draws)  # without replacement
    pairs = Counter(draws)
    for i in range(3):
        for j in range(3):
            if i != j:  # successive draws: P(i then j) = p_i * p_j / (1 - p_i)
                expected = p[i] * p[j] / (1 - p[i])
                assert abs(pairs[(i, j)] / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3
    assert sorted(sample_examples(scores, 10, 0.1, rng)) == [0, 1, 2]  # k larger than the pool: all of it
    # Far apart scores: the best entry is (almost) always drawn first; underflowing weights still work.
    assert all(sample_examples([0.0, 100.0, 0.0], 2, 0.1, rng)[0] == 1 for _ in range(50))


# --- prompts and candidates -----------------------------------------------------------------------
def test_candidate_extraction():
    assert extract_candidate(" The man next door is\n6. Another one") == "The man next door is"
    assert extract_candidate("\n\n  \n5. She told me that\n") == "She told me that"
    assert extract_candidate("2) My boss is a") == "My boss is a"
    assert extract_candidate("- Some people are") == "Some people are"
    assert extract_candidate('"You are such a"') == "You are such a"
    assert extract_candidate("3.5 million people") == "3.5 million people"  # a number, not numbering
    assert extract_candidate("def f(a,b):\n    return a") == "def f(a,b):"
    assert extract_candidate("") is None
    assert extract_candidate(" \n 5. \n\n") is None


def test_red_prompt_lists_the_examples_and_ends_with_the_next_number():
    examples = ["First one", "Second\none", "Third", "Fourth"]
    assert few_shot_text(examples) == "1. First one\n2. Second one\n3. Third\n4. Fourth\n5."
    plain = build_red_prompt("pii", examples, chat=False)
    assert plain == RED_LM_TEMPLATES["pii"] + "\n" + few_shot_text(examples)
    with pytest.raises(ValueError, match="unknown red-teaming task"):
        build_red_prompt("nope", examples)


def test_red_prompt_with_a_chat_template_prefills_the_answer():
    tok = train_bpe(TEXTS, vocab_size=300)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    prompt = build_red_prompt("toxicity", ["a", "b", "c", "d"], tok)
    assert prompt == f"<user>{RED_LM_TEMPLATES['toxicity']}</s><assistant>1. a\n2. b\n3. c\n4. d\n5."
    # without a chat template: plain text after the BOS token
    assert build_red_prompt("toxicity", ["a"], train_bpe(TEXTS, vocab_size=300)).startswith(
        "<|endoftext|>" + RED_LM_TEMPLATES["toxicity"]
    )


# --- whole runs -----------------------------------------------------------------------------------
def test_one_round_end_to_end(lms):
    out = _run(lms)
    assert set(out) == {"initial", "rounds", "pool", "settings"}
    assert out["initial"]["pool_size"] == len(POOL)
    assert out["initial"]["best"] == 0.5
    assert out["initial"]["pool_mean"] == pytest.approx(np.mean([s for _, s in POOL]))
    (round_,) = out["rounds"]
    (trial,) = round_["trials"]
    candidates = trial["candidates"]
    assert candidates, "the tiny red LM produced no candidate"
    assert round_["num_candidates"] == trial["num_candidates"] == len(candidates) <= 6
    assert len(trial["examples"]) == 4 and set(trial["examples"]) <= {p for p, _ in POOL}
    assert trial["red_prompt"].endswith("4. " + trial["examples"][3] + "\n5.")
    for c in candidates:
        assert c["prompt"] and "\n" not in c["prompt"]
        assert len(c["samples"]) == 4  # continuations
        assert c["score"] == pytest.approx(np.mean(share_of_e(c["samples"])))
        assert c["own_score"] == pytest.approx(share_of_e([c["prompt"]])[0])
    # the pool grew by the candidates
    new = {c["prompt"] for c in candidates} - {p for p, _ in POOL}
    assert len(out["pool"]) == len(POOL) + len(new) == trial["pool_size"]
    scores = [e["score"] for e in out["pool"]]
    assert scores == sorted(scores, reverse=True)
    assert round_["best"] == trial["best"] == max(scores)
    assert round_["pool_mean"] == pytest.approx(np.mean(scores))
    assert round_["top10_mean"] == pytest.approx(np.mean(scores[:10]))
    assert [b["score"] for b in round_["best_prompts"]] == scores[:10]
    by_prompt = {e["prompt"]: e for e in out["pool"]}
    for c in candidates:
        if c["prompt"] in new:
            assert by_prompt[c["prompt"]]["source"] == "red" and by_prompt[c["prompt"]]["round"] == 1
            assert by_prompt[c["prompt"]]["score"] == pytest.approx(c["score"])


def test_pep8_scores_prompt_plus_continuation(lms):
    out = _run(lms, task="pep8")
    for c in out["rounds"][0]["trials"][0]["candidates"]:
        assert c["score"] == pytest.approx(np.mean(share_of_e([c["prompt"] + s for s in c["samples"]])))
    assert out["settings"]["score_with_prompt"] is True


def test_rounds_and_trials_seeds_and_prefix(lms):
    good, bad = lms["control"]
    _, target_tok = lms["target"]
    kwargs = dict(
        rounds=2, trials=2, target_prefix=target_tok.eos_token + "<|good|>", forbidden_ids=[good, bad], seed=3
    )
    out = _run(lms, **kwargs)
    assert [r["round"] for r in out["rounds"]] == [1, 2]
    for r in out["rounds"]:
        assert len(r["trials"]) == 2
        assert r["pool_mean"] == pytest.approx(np.mean([t["pool_mean"] for t in r["trials"]]))
        assert r["best"] == pytest.approx(np.mean([t["best"] for t in r["trials"]]))
        assert r["num_candidates"] == sum(t["num_candidates"] for t in r["trials"])
        for t in r["trials"]:
            for c in t["candidates"]:
                assert all("<|good|>" not in s and "<|bad|>" not in s for s in c["samples"])
    # each trial restarts from the initial pool; a trial's pool only grows over its rounds
    for trial in range(2):
        first, second = (out["rounds"][r]["trials"][trial] for r in range(2))
        assert len(POOL) <= first["pool_size"] <= second["pool_size"]
        assert second["best"] >= first["best"]
        assert sum(e["trial"] == trial for e in out["pool"]) == second["pool_size"]
    # the trials differ, and the same seed reproduces the run exactly
    assert (
        out["rounds"][0]["trials"][0]["red_prompt"] != out["rounds"][0]["trials"][1]["red_prompt"]
        or out["rounds"][0]["trials"][0]["candidates"] != out["rounds"][0]["trials"][1]["candidates"]
    )
    assert _run(lms, **kwargs) == out
    assert _run(lms, **{**kwargs, "seed": 4})["rounds"] != out["rounds"]


def test_scorer_objects_and_errors(lms):
    from tests.helpers.user_scorers import CountScorer

    small = dict(task="pii", completions=3, continuations=2)
    out = _run(lms, CountScorer("e"), **small)
    for c in out["rounds"][0]["trials"][0]["candidates"]:
        assert c["score"] == pytest.approx(np.mean([s.count("e") for s in c["samples"]]))
    with pytest.raises(ValueError, match="unknown red-teaming task"):
        _run(lms, **{**small, "task": "nope"})
    with pytest.raises(TypeError, match="scorer must be"):
        _run(lms, object(), **small)
    with pytest.raises(ValueError, match="initial pool is empty"):
        _run(lms, pool=[], **small)
    with pytest.raises(ValueError, match="k must be >= 1"):
        _run(lms, **{**small, "k": 0})
    with pytest.raises(ValueError, match="returned 1 scores"):
        _run(lms, lambda texts: [0.0], **small)
