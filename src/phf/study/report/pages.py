"""The report's two documents: ``report.md`` and a self-contained ``report.html`` (CSS inline,
figures as base64 PNG data URIs, model outputs escaped: they may contain markup)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from phf.io.atomic import write_text_atomic
from phf.study.report.claims import CLAIMS_HEADERS, claims_markdown, claims_table
from phf.study.report.over_seeds import HEADERS as OVER_SEEDS_HEADERS
from phf.study.report.over_seeds import over_seeds_rows
from phf.study.report.runs import number
from phf.study.report.table import MISSING, columns, control_sentence, fmt, results_rows, sampling_sentence

SAMPLE_CHARS = 200

HOW_TO_READ = (
    "Each arm is one language model trained on the same scored corpus with a different objective "
    "(Korbak et al. 2023, \u201cPretraining Language Models with Human Preferences\u201d). "
    "<b>Misalignment</b> is the mean score that the task's scorer gives to unconditional samples of the "
    "model (e.g. the probability that a sample is toxic, or PII / PEP8 violations per character), with "
    "a 95% bootstrap confidence interval. <b>max@25</b> is the expected maximum score in a group of 25 "
    "samples (the worst case a user would see), and the <b>hit rate</b> the share of samples above the "
    "task's threshold. The <b>judge</b> is an independent classifier scoring the same samples, so that a "
    "model cannot look aligned merely by fooling the scorer it was trained with. <b>KL</b> is "
    "KL(reference \u2016 model) in nats per sample: how much probability the model lost on text a "
    "reference model (by default the MLE arm) writes, a measure of capability lost. <b>LM loss</b> is the "
    "held-out cross-entropy in nats per token. Lower is better for all of these; distinct-n and "
    "Self-BLEU-5 measure diversity (a sharp drop of distinct-n or rise of Self-BLEU would mean "
    "collapsed, repetitive samples). MLE is plain pretraining; <b>conditional training</b> (prefix each "
    "segment with &lt;|good|&gt; or &lt;|bad|&gt; and sample after &lt;|good|&gt;) was the paper's best "
    "method: about 10x less misalignment at little capability cost."
)

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1250px;margin:2em auto;
  padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555}.howto{background:#f6f8fa;border-left:4px solid #8aa;padding:.6em 1em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .55em;vertical-align:top}th{background:#f0f0f0;text-align:left}
table.results td{text-align:right;white-space:nowrap}
table.results td:nth-child(1),table.results td:nth-child(2){text-align:left}
tr.unevaluated td{color:#888;font-style:italic}
table.samples td.text{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;white-space:pre-wrap;
  word-break:break-word;max-width:900px}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:.92em;max-width:1100px}
.note{color:#666;font-size:.9em}
"""

OVER_SEEDS_NOTE = (
    "Each arm against the MLE run of the same seed: MLE's misalignment divided by the arm's (higher: the "
    "arm is less misaligned), per seed and as a geometric mean with its 95% t-interval over seeds (on the "
    "log scale); conditional arms under each other sampling protocol too. LM loss, KL and distinct-2 are "
    "means over seeds; control AUROC per seed. Computed from results.json by phf.study.report.over_seeds."
)

CLAIMS_NOTE = (
    "Each of the paper's claims that these runs can speak to, reduced to a per-seed quantity (each arm "
    "against the MLE run of the same seed) with its mean and 95% t-interval over seeds. Holds: the interval "
    "lies on the paper's side of the rule's bound; does not hold: wholly on the other side; inconclusive: "
    "neither, or a single seed. Computed from results.json by phf.study.report.claims."
)


def _md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell: HTML-escaped (Markdown renders raw HTML) and with
    Markdown's punctuation backslash-escaped."""
    text = html.escape(text, quote=False)
    return re.sub(r"([\\`*_\[\]{}#+!|~])", r"\\\1", text)


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _display_text(text: str, limit: int = SAMPLE_CHARS) -> str:
    """One line, at most ``limit`` characters; newlines shown as ⏎."""
    text = re.sub(r"\s*\n\s*", " \u23ce ", text.strip())
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _html_table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_h(x)}</th>" for x in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass
class Page:
    """What a report says; report.md and report.html say it in their two formats."""

    title: str
    date: str
    facts: dict
    rows: list[dict]
    sentences: list[str]
    figures: dict
    captions: dict
    samples: dict[str, list[dict]]
    missing: list[str]
    claims: list[dict]

    def parts(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))


def write_markdown(path: Path, page: Page) -> None:
    title, date, facts, rows, sentences, figures, captions, samples, missing, claims = page.parts()
    md = [f"# {_md_escape(title)}", "", f"*Generated {date} by phf report.*", ""]
    md.append(f"- **Scorer:** {_md_escape('; '.join(facts['scorers']) or MISSING)}")
    if facts["judge"]:
        md.append(f"- **Judge:** {_md_escape(', '.join(facts['judge']))}")
    md.append(f"- **Samples:** {_md_escape(sampling_sentence(facts))}")
    md.append(f"- **Arms:** {len(rows)} ({sum(r['evaluated'] for r in rows)} evaluated)")
    md += ["", "## How to read this", "", html.unescape(re.sub(r"</?b>", "**", HOW_TO_READ)).replace("<", "&lt;"), ""]
    md += ["## Results", ""]
    md.append("| " + " | ".join(h for _, h in columns(rows)) + " |")
    md.append("|" + "|".join(":--" if k in ("arm", "objective") else "--:" for k, _ in columns(rows)) + "|")
    for cells in results_rows(rows):
        md.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    md.append("")
    md.append(
        "*Misalignment: mean ± half-width of the 95% bootstrap interval (bounds in results.json); "
        "KL in nats per sample; LM loss in nats per token; wall time = training + evaluation.*"
    )
    md.append("")
    if sentences:
        md += ["Misalignment relative to MLE \u2014 " + _md_escape("; ".join(sentences)) + ".", ""]
    control = control_sentence(rows)
    if control:
        md += [_md_escape(control), ""]
    per_objective = over_seeds_rows(rows)
    if per_objective:
        md += ["## Per objective, over seeds", "", _md_escape(OVER_SEEDS_NOTE), ""]
        md.append("| " + " | ".join(OVER_SEEDS_HEADERS) + " |")
        md.append("|" + "|".join(":--" if i < 2 else "--:" for i in range(len(OVER_SEEDS_HEADERS))) + "|")
        md += ["| " + " | ".join(_md_escape(c) for c in cells) + " |" for cells in per_objective] + [""]
    for stem, heading in (
        ("pareto", "Misalignment vs capability"),
        ("misalignment_over_tokens", "Misalignment during training"),
        ("redteam", "Red teaming"),
        ("capability", "Capability per arm"),
        ("finetune", "Pretraining with feedback vs finetuning"),
    ):
        if figures.get(stem):
            md += [f"## {heading}", "", f"![{heading}]({stem}.png)", "", f"*{_md_escape(captions[stem])}*", ""]
    if claims:
        md += ["## The paper's claims at this scale", "", _md_escape(CLAIMS_NOTE), "", claims_markdown(claims), ""]
    md += [
        "## Samples",
        "",
        "Unconditional samples (a spread over each arm's score distribution), truncated to "
        f"{SAMPLE_CHARS} characters; \u23ce marks a line break. These are raw model outputs and may be offensive.",
        "",
    ]
    for r in rows:
        md += [f"### {_md_escape(r['name'])}", ""]
        picked = samples.get(r["name"]) or []
        if not picked:
            md += ["No samples (samples.jsonl missing or empty).", ""]
            continue
        judge = any(number(s.get("judge")) is not None for s in picked)
        md.append("| which | score |" + (" judge |" if judge else "") + " text |")
        md.append("|:--|--:|" + ("--:|" if judge else "") + ":--|")
        for s in picked:
            md.append(
                f"| {_md_escape(s['which'])} | {fmt(s.get('score'))} |"
                + (f" {fmt(s.get('judge'))} |" if judge else "")
                + f" {_md_escape(_display_text(s['text']))} |"
            )
        md.append("")
    if missing:
        md += ["## Missing or skipped", ""] + [f"- {_md_escape(line)}" for line in missing] + [""]
    md += ["## Files", "", "- results.json: every number above, per arm, with the paths read"]
    for r in rows:
        md.append(f"- {_md_escape(r['name'])}: {_md_escape(r['path'])}")
    write_text_atomic(path, "\n".join(md) + "\n")


def write_html(path: Path, out: Path, page: Page) -> None:
    title, date, facts, rows, sentences, figures, captions, samples, missing, claims = page.parts()
    h = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_h(title)}</title>',
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        f'<p class="meta">Generated {_h(date)} by phf report.</p><ul class="meta">',
        f"<li><b>Scorer:</b> {_h('; '.join(facts['scorers']) or MISSING)}</li>",
    ]
    if facts["judge"]:
        h.append(f"<li><b>Judge:</b> {_h(', '.join(facts['judge']))}</li>")
    h.append(f"<li><b>Samples:</b> {_h(sampling_sentence(facts))}</li>")
    h.append(f"<li><b>Arms:</b> {len(rows)} ({sum(r['evaluated'] for r in rows)} evaluated)</li></ul>")
    h.append(f'<h2>How to read this</h2><p class="howto">{HOW_TO_READ}</p>')  # HOW_TO_READ is our own markup
    h.append("<h2>Results</h2>")
    h.append(
        _html_table(
            [label for _, label in columns(rows)],
            results_rows(rows),
            ["" if r["evaluated"] else "unevaluated" for r in rows],
        ).replace("<table>", '<table class="results">', 1)
    )
    h.append(
        '<p class="note">Misalignment: mean ± half-width of the 95% bootstrap interval (bounds in '
        "results.json); KL in nats per sample; LM loss in nats per token; wall time = training + evaluation.</p>"
    )
    if sentences:
        h.append(f"<p>Misalignment relative to MLE \u2014 {_h('; '.join(sentences))}.</p>")
    control = control_sentence(rows)
    if control:
        h.append(f"<p>{_h(control)}</p>")
    per_objective = over_seeds_rows(rows)
    if per_objective:
        h.append(f'<h2>Per objective, over seeds</h2><p class="note">{_h(OVER_SEEDS_NOTE)}</p>')
        h.append(_html_table(OVER_SEEDS_HEADERS, per_objective))
    for stem, heading in (
        ("pareto", "Misalignment vs capability"),
        ("misalignment_over_tokens", "Misalignment during training"),
        ("redteam", "Red teaming"),
        ("capability", "Capability per arm"),
        ("finetune", "Pretraining with feedback vs finetuning"),
    ):
        if figures.get(stem):
            data = base64.b64encode((out / f"{stem}.png").read_bytes()).decode("ascii")
            h.append(
                f'<h2>{_h(heading)}</h2><figure><img alt="{_h(heading)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_h(captions[stem])}</figcaption></figure>"
            )
    if claims:
        h.append(f'<h2>The paper\'s claims at this scale</h2><p class="note">{_h(CLAIMS_NOTE)}</p>')
        h.append(_html_table(CLAIMS_HEADERS, claims_table(claims)).replace("<table>", '<table class="claims">', 1))
    h.append(
        '<h2>Samples</h2><p class="note">Unconditional samples (a spread over each arm\'s score distribution), '
        f"truncated to {SAMPLE_CHARS} characters; \u23ce marks a line break. These are raw model outputs and may "
        "be offensive.</p>"
    )
    for r in rows:
        h.append(f"<h3>{_h(r['name'])}</h3>")
        picked = samples.get(r["name"]) or []
        if not picked:
            h.append('<p class="note">No samples (samples.jsonl missing or empty).</p>')
            continue
        judge = any(number(s.get("judge")) is not None for s in picked)
        head = "<tr><th>which</th><th>score</th>" + ("<th>judge</th>" if judge else "") + "<th>text</th></tr>"
        body = "".join(
            f"<tr><td>{_h(s['which'])}</td><td>{_h(fmt(s.get('score')))}</td>"
            + (f"<td>{_h(fmt(s.get('judge')))}</td>" if judge else "")
            + f'<td class="text">{_h(_display_text(s["text"]))}</td></tr>'
            for s in picked
        )
        h.append(f'<table class="samples"><thead>{head}</thead><tbody>{body}</tbody></table>')
    if missing:
        h.append("<h2>Missing or skipped</h2><ul>" + "".join(f"<li>{_h(line)}</li>" for line in missing) + "</ul>")
    h.append(
        "<h2>Files</h2><ul><li>results.json: every number above, per arm, with the paths read</li>"
        + "".join(f"<li>{_h(r['name'])}: <code>{_h(r['path'])}</code></li>" for r in rows)
        + "</ul>"
    )
    h.append("</body></html>\n")
    write_text_atomic(path, "\n".join(h))
