"""Model construction: the fused activation computes what the stock one does."""

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from phf.config import ModelConfig
from phf.model import build_model, load_model


def test_fused_gelu_replaces_gelu_new_without_changing_the_function(tmp_path):
    built = build_model(ModelConfig(model_type="gpt2", config={"n_layer": 2, "n_head": 2, "n_embd": 32}),
                        vocab_size=100, seq_len=16, eos_id=0)
    assert built.config.activation_function == "gelu_pytorch_tanh"

    # A checkpoint saved with the stock activation loads with the fused one and the same outputs.
    torch.manual_seed(0)
    stock = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16,
                                       activation_function="gelu_new")).eval()
    stock.save_pretrained(tmp_path)
    fused = load_model(str(tmp_path)).eval()
    assert fused.config.activation_function == "gelu_pytorch_tanh"
    ids = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, stock(ids).logits, rtol=1e-5, atol=1e-5)
    # What phf saves loads with plain transformers.
    fused.save_pretrained(tmp_path / "saved")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved").config.activation_function == "gelu_pytorch_tanh"
