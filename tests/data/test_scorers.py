"""Each built-in scorer against hand-computed values; user and local-HF scorers; bad options."""

import codecs
import json

import pytest

from phf.data.scoring import get_scorer, parse_options
from phf.data.segment import split_lines


def rot13(text):  # offensive test strings are stored ROT13-encoded, never in plain form
    return codecs.encode(text, "rot13")


def test_toxicity_default_separates_insult_from_clean_text():
    scorer = get_scorer("toxicity")
    clean, insult = scorer.score(["The weather is lovely in the park today.", rot13("lbh ner n fghcvq vqvbg")])
    assert 0 <= clean < 0.2 and insult > 0.9
    assert scorer.describe()["name"] == "toxicity" and scorer.segmenter == "sentence"
    assert scorer.score([]) == []


def test_pii_counts_matches_per_character():
    scorer = get_scorer("pii")
    texts = [
        "Write to jane.doe@example.com today.",
        "Send it to 225 E. John Carpenter Freeway, Suite 1500 Irving, Texas 75062 today",
        "Nothing personal here.",
        "",
        "add me on skype: cool_dude42 tonight",
    ]
    scores = scorer.score(texts)
    assert scores[0] == pytest.approx(1 / len(texts[0]))  # one e-mail
    assert scores[1] == pytest.approx(1 / len(texts[1]))  # one pyap address
    assert scores[2] == 0 and scores[3] == 0
    assert scores[4] > 0  # the Skype name next to the word "skype"


def test_pep8_charges_violations_to_their_lines():
    scorer = get_scorer("pep8")
    doc = "import os,sys\n\ndef f( x ):\n    return x\n"
    lines = split_lines(doc)
    # line 1: E401 multiple imports + E231 missing whitespace; line 3: E302, E201, E202
    assert scorer.violations_per_line(lines) == [2, 0, 3, 0]
    assert scorer.score_documents([lines]) == [[2 / 14, 0.0, 3 / 12, 0.0]]
    assert scorer.score([doc]) == [pytest.approx(5 / len(doc))]  # standalone: per character of the whole
    assert scorer.score(["x = 1\n"]) == [0.0]


def test_pep8_survives_truncated_code():
    import inspect
    import json as module

    source = inspect.getsource(module)
    scorer = get_scorer("pep8")
    for cut in range(0, len(source), max(1, len(source) // 60)):
        piece = source[:cut]
        scores = scorer.score_documents([split_lines(piece)])[0]
        assert len(scores) == len(split_lines(piece)) and all(s >= 0 for s in scores)


def test_user_scorers_function_and_class():
    fn = get_scorer("tests.helpers.user_scorers:length_score")
    assert fn.score(["xx", "ab"]) == [1.0, 0.0] and fn.segmenter == "sentence"
    assert fn.version.startswith("src-")  # changes whenever the user's code does
    assert get_scorer("tests.helpers.user_scorers:length_score", segmenter="line").segmenter == "line"
    cls = get_scorer("tests.helpers.user_scorers:CountScorer", char="b")
    assert cls.score(["abba"]) == [2.0] and cls.segmenter == "line"


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("nope", {}, "unknown scorer 'nope'"),
        ("toxicity", {"foo": 1}, "takes no option 'foo'"),
        ("toxicity", {"backend": "hf"}, "needs the option(s) path"),
        ("toxicity", {"backend": "magic"}, "unknown backend 'magic'"),
        ("pep8", {"max_line_lenght": 3}, "max_line_length"),
        ("tests.helpers.user_scorers:missing", {}, "has no attribute 'missing'"),
        ("no_such_module_xyz:f", {}, "cannot import module"),
        ("tests.helpers.user_scorers:length_score", {"segmenter": "word"}, "unknown segmenter 'word'"),
    ],
)
def test_bad_scorer_names_and_options_are_named(name, options, message):
    with pytest.raises(ValueError, match=None) as info:
        get_scorer(name, **options)
    assert message in str(info.value)


def test_parse_options():
    assert parse_options(["a=1", "b=0.5", "c=true", "d=text", "e=a=b"]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "text",
        "e": "a=b",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["novalue"])


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A local HF sequence classifier (random weights, word-level tokenizer), as a user would have."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("clf")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "day"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        id2label={0: "ok", 1: "toxic"},
        label2id={"ok": 0, "toxic": 1},
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_hf_classifier_backend_matches_a_manual_forward(tiny_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["good day", "bad bad day", "unknown words here"]
    scorer = get_scorer("toxicity", backend="hf", path=str(tiny_classifier), label="toxic", batch_size=2)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    with torch.no_grad():
        expected = [model(**tokenizer([t], return_tensors="pt")).logits.softmax(-1)[0, 1].item() for t in texts]
    assert scorer.score(texts) == pytest.approx(expected, abs=1e-5)
    assert get_scorer("toxicity", backend="hf", path=str(tiny_classifier), label=1).score(texts) == pytest.approx(
        expected, abs=1e-5
    )
    with pytest.raises(ValueError, match="label 'insult' not in"):
        get_scorer("toxicity", backend="hf", path=str(tiny_classifier), label="insult").score(texts)
    with pytest.raises(FileNotFoundError, match="not a local model directory"):
        get_scorer("toxicity", backend="hf", path=str(tiny_classifier / "missing"))
    assert json.dumps(scorer.describe())  # recordable in a manifest


@pytest.mark.parametrize(
    "name, options", [("toxicity", {}), ("pii", {"address_countries": "US,GB"}), ("pep8", {"max_line_length": 100})]
)
def test_a_scorer_rebuilds_from_its_recorded_config(name, options):
    scorer = get_scorer(name, **options)
    again = get_scorer(scorer.describe()["name"], **scorer.describe()["config"])
    assert again.describe() == scorer.describe()
