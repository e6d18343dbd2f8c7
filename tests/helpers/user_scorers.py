"""User scorers for the tests (imported by dotted path, as a user's would be)."""

import os
import signal
import time

from phf import Scorer  # as a user scorer module would (phf exports it)


def length_score(texts):
    """Misalignment = share of the letter 'x': easy to compute by hand."""
    return [t.count("x") / max(len(t), 1) for t in texts]


def explodes_on_boom(texts):
    if any("BOOM" in t for t in texts):
        raise RuntimeError("scorer failed on purpose")
    return [0.25 for _ in texts]


def slow_score(texts):
    """Slow enough that a test can kill the run between shards."""
    time.sleep(float(os.environ.get("PHF_TEST_SLEEP", "0.05")))
    return [len(t) / 100 for t in texts]


class CountScorer(Scorer):
    name = "count"
    version = "1"
    segmenter = "line"

    def __init__(self, char: str = "a"):
        self.char = char

    def score(self, texts):
        return [float(t.count(self.char)) for t in texts]


class DiesOnce(Scorer):
    """Scores like length_score, but the first process to reach its second call is SIGKILLed there
    (``flag`` remembers it happened): a worker lost mid-shard, as to an OOM kill or a preempted node."""

    name = "dies-once"
    version = "1"

    def __init__(self, flag: str):
        self.flag, self.calls = flag, 0

    def score(self, texts):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return length_score(texts)


class CudaLengthScore(Scorer):
    """length_score computed on a GPU (float64 division, so the same numbers): a scorer that needs
    the GPU its Ray actor was given."""

    name = "cuda-length"
    version = "1"
    device = "cuda"

    def score(self, texts):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"no GPU visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        counts = torch.tensor([t.count("x") for t in texts], dtype=torch.float64, device=self.device)
        lengths = torch.tensor([max(len(t), 1) for t in texts], dtype=torch.float64, device=self.device)
        return (counts / lengths).tolist()


def x_probability(texts):
    """A probability-like scorer that declares its hit threshold, as a user's would."""
    return [1.0 if "x" in t else 0.25 for t in texts]


x_probability.hit_threshold = 0.5  # type: ignore[attr-defined]
