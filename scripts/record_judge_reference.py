"""One-off: record the ORIGINAL Keras model's outputs into tests/fixtures/judge_reference.json.

Not run by the tests (they must not need TensorFlow). Run it in a scratch venv that has
tensorflow-cpu (it was recorded with tensorflow-cpu 2.21 / keras 3.15) and the pinned wheel
installed without its dependencies:

    python -m venv /tmp/tfenv/v && /tmp/tfenv/v/bin/pip install tensorflow-cpu
    /tmp/tfenv/v/bin/pip install --no-deps ~/.cache/phf/pip/toxic_comment_classifier-0.3.0-py3-none-any.whl
    /tmp/tfenv/v/bin/python scripts/record_judge_reference.py

Every text is kept ROT13-encoded, here and in the fixture, so that no offensive text sits in the
repo in plain form; the test decodes them.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # phf itself is not installed in the TF venv

from phf.io.fetch import PIP_ARTIFACTS, fetch_pip  # noqa: E402

# ~100 words of clean prose, and a toxic sentence; the two long texts put the toxic part before or
# after it, so pad_sequences' truncating="pre" (keep the LAST 100 words) is exercised both ways.
CLEAN = codecs.encode(
    "the committee met on tuesday to review the proposed changes to the article about the history "
    "of the river valley and agreed that the new sources were reliable and that the section on early "
    "settlements should be expanded with more detail about farming trade and local customs before the "
    "next review which is planned for the end of the month when the editors will also discuss the "
    "images the maps and the references that still need page numbers so that readers can check every "
    "claim against the original books and papers listed in the bibliography at the bottom of the page",
    "rot13",
)
TOX = "lbh ner n jbeguyrff vqvbg naq n fghcvq zbeba, fuhg gur shpx hc"

# (key, ROT13 text). ROT13 leaves non-ASCII characters, digits, punctuation and whitespace alone.
TEXTS_ROT13 = [
    ("clean", "Gur jrngure vf ybiryl gbqnl, naq gur tneqra ybbxf ornhgvshy."),
    ("empty", ""),
    ("polite", "Gunax lbh sbe lbhe uryc jvgu gur negvpyr; V ernyyl nccerpvngr gur pnershy rqvgf."),
    ("upper_punct", "JUL JBHYQ LBH QRYRGR ZL RQVGF?!?! Guvf vf HASNVE!!! (frr: gnyx-cntr #3)"),
    ("unicode", "Pnsé anïir eéfhzé — “fzneg dhbgrf” qba’g → ☎ 😀 日本語"),
    ("oov_mixed", "Klmmlcyhtu seboavpngrq gur dhhkyl oybeof arne jvxvcrqvn"),
    ("all_oov", "djkmi cyzbxa mmkld"),
    # word indices 19999 and 20000 .. 20001: the first is kept, the others dropped by num_words
    ("vocab_edge", "jrf funggrevat pyvzngrf unegzna"),
    # tab/newline are filtered to spaces, but split=" " keeps "\xa0" inside words
    ("whitespace", "Cyrnfr\tfgbc\ninaqnyvmvat\xa0cntrf  abj\xa0gnyx"),
    ("known", "Lbh ner n shpxvat vqvbg naq rirelbar ungrf lbh."),
    ("threat", "V jvyy svaq jurer lbh yvir naq xvyy lbh, lbh cngurgvp ybfre."),
    ("obscene", "fuhg gur shpx hc lbh cvrpr bs fuvg"),
    ("identity", "tb onpx gb lbhe pbhagel lbh svygul tnl wrj fphz"),
    ("long_toxic_head", TOX + " " + CLEAN),
    ("long_toxic_tail", CLEAN + " " + TOX),
]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import toxic_classifier
    from toxic_classifier import ToxicCommentClassifier

    # The installed package must carry exactly the model files of the pinned wheel.
    wheel = fetch_pip("toxic-comment-classifier")
    installed = Path(toxic_classifier.__file__).parent / "model"
    with zipfile.ZipFile(wheel) as zf:
        for member in ("model.weights.h5", "tokenizer.pickle"):
            pinned = _sha(zf.read(f"toxic_classifier/model/{member}"))
            if _sha((installed / member).read_bytes()) != pinned:
                raise SystemExit(f"installed {member} differs from the pinned wheel's")

    clf = ToxicCommentClassifier()
    cases = []
    for key, encoded in TEXTS_ROT13:
        text = codecs.decode(encoded, "rot13")
        cases.append(
            {
                "key": key,
                "text_rot13": encoded,
                # the original tokenizer's ids, to test the tokenizer port on its own
                "sequence": clf.tokenizer.texts_to_sequences([text])[0],
                "scores": clf.classify(text),  # one text at a time, as the wheel does
            }
        )
    art = PIP_ARTIFACTS["toxic-comment-classifier"]
    fixture = {
        "comment": "Outputs of the original Keras model of toxic-comment-classifier==0.3.0 "
        "(ToxicCommentClassifier().classify, one text per call). Every text is ROT13-encoded "
        "(codecs.encode(s, 'rot13')) so no offensive text is stored in plain form; decode with "
        "codecs.decode(s, 'rot13'). Recorded by scripts/record_judge_reference.py.",
        "wheel": art.filename,
        "wheel_sha256": art.sha256,
        "recorded_with": {"tensorflow": tf.__version__, "keras": keras.__version__, "python": sys.version.split()[0]},
        "cases": cases,
    }
    out = ROOT / "tests" / "fixtures" / "judge_reference.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, indent=1, ensure_ascii=True) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
