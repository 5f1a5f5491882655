"""The Query: what to search for, built by the CLI, the Python API and the web page, executed by search.py.

    Query.parse("2:a dog + on a beach - 0.5:at night", k=5)
    Query(terms=(Term.text("a dog"), Term.image("hand.jpg", weight=-1)), filters=Filters(formats=("jpeg",)))

A query is a weighted sum of terms: texts (embedded by the model's text tower), example image files
(embedded by its image tower) and images already in the library (their stored vectors: `like`). A
negative weight subtracts the term. The query vector is the normalised weighted sum of the terms' unit
vectors; with `templates` ("a photo of {}", ...) a text term's vector is the mean of its prompts' unit
vectors. Filters select the candidates before ranking; `min_score` and `cutoff` decide which results
are good enough to show; `sort` orders the results that passed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from .errors import ConfigError

MAX_QUERY_CHARS = 4096  # the model reads at most 77 tokens; a longer text is a mistake, not a query
MAX_TERMS = 32
MAX_K = 10_000
SORTS = ("score", "date", "path")
CUTOFFS = ("none", "auto")
TERM_KINDS = ("text", "image", "like")
MAX_TEMPLATES = 16
# Prompt templates for text terms: none by default, since on the demo evaluation they did not help (the
# figures are in the README, "Steering a search"; benchmarks/prompt_templates.py measures them).
DEFAULT_TEMPLATES: tuple[str, ...] = ()


def check_query_text(text: str) -> None:
    """Refuse what cannot be a query before any model is loaded: empty, NUL, megabytes."""
    if not text.strip():
        raise ConfigError("query is empty: give some words to search for")
    if "\x00" in text:
        raise ConfigError("the query contains a NUL character")
    if len(text) > MAX_QUERY_CHARS:
        raise ConfigError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS} "
                          f"(the model reads only its first tokens)")


@dataclass(frozen=True)
class Term:
    """One part of a query. kind: text (words), image (an image file to embed), like (an indexed image,
    by embedding id or by path: its stored vector is used and no model is loaded)."""

    kind: str
    value: str | int
    weight: float = 1.0

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> "Term":
        return cls("text", text, weight)

    @classmethod
    def image(cls, path, weight: float = 1.0) -> "Term":
        return cls("image", str(path), weight)

    @classmethod
    def like(cls, id_or_path: int | str, weight: float = 1.0) -> "Term":
        return cls("like", id_or_path, weight)

    def validate(self) -> None:
        if self.kind not in TERM_KINDS:
            raise ConfigError(f"unknown query term kind {self.kind!r} (one of: {', '.join(TERM_KINDS)})")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) \
                or self.weight == 0:
            raise ConfigError(f"a term's weight must be a non-zero number, not {self.weight!r}")
        if self.kind == "text":
            if not isinstance(self.value, str):
                raise ConfigError("a text term needs a string")
            check_query_text(self.value)
        elif self.kind == "image" and (not isinstance(self.value, str) or not self.value or "\x00" in self.value):
            raise ConfigError("an image term needs the path of an image file")
        elif self.kind == "like" and (isinstance(self.value, bool) or not isinstance(self.value, (int, str))
                                      or (isinstance(self.value, int) and self.value < 1) or self.value == ""):
            raise ConfigError("a like term needs an image id (a whole number) or the path of an indexed image")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "weight": self.weight}


@dataclass(frozen=True)
class Filters:
    """Which images may be results, applied before ranking. None means "no condition".

    folder: only files under this directory; path_glob: a shell glob on the whole path; modified_*:
    file modification time (seconds since the epoch); taken_*: the photo's own date (EXIF
    DateTimeOriginal); width/height/megapixels bounds; formats: lower-case names like "jpeg", "png";
    tags: labels given by `clipsearch tag` (any of them; Catalog.tag_condition).
    """

    folder: str | None = None
    path_glob: str | None = None
    modified_after: float | None = None
    modified_before: float | None = None
    taken_after: float | None = None
    taken_before: float | None = None
    min_width: int | None = None
    min_height: int | None = None
    min_megapixels: float | None = None
    max_megapixels: float | None = None
    formats: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # images whose content carries any of these tags (`clipsearch tag`)

    @property
    def active(self) -> bool:
        return any(v not in (None, ()) for v in self.__dict__.values())

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if v not in (None, ())}


@dataclass(frozen=True)
class Query:
    terms: tuple[Term, ...]
    k: int = 10
    min_score: float | None = None
    cutoff: str = "auto"  # cutoff.py; measured by benchmarks/cutoff.py (README: "The cut-off")
    filters: Filters = field(default_factory=Filters)
    sort: str = "score"
    include_self: bool = False
    # each text term is embedded once per template ("{}" stands for the text) and the unit vectors averaged;
    # () embeds the text as it is
    templates: tuple[str, ...] = DEFAULT_TEMPLATES

    @classmethod
    def text(cls, text: str, **options) -> "Query":
        return cls(terms=(Term.text(text),), **options)

    @classmethod
    def image(cls, path, **options) -> "Query":
        return cls(terms=(Term.image(path),), **options)

    @classmethod
    def parse(cls, text: str, **options) -> "Query":
        """A search box's string: terms joined by ` + ` and ` - `, each optionally `WEIGHT:words`."""
        return cls(terms=parse_terms(text), **options)

    def with_terms(self, *terms: Term) -> "Query":
        return replace(self, terms=self.terms + tuple(terms))

    def validate(self) -> "Query":
        if not self.terms:
            raise ConfigError("nothing to search for: give a text, an image or an indexed image")
        if len(self.terms) > MAX_TERMS:
            raise ConfigError(f"a query takes at most {MAX_TERMS} terms, not {len(self.terms)}")
        for t in self.terms:
            t.validate()
        if not any(t.weight > 0 for t in self.terms):
            raise ConfigError("a query needs at least one positive term (something to look for)")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise ConfigError(f"k must be a whole number from 1 to {MAX_K}, not {self.k!r}")
        if self.min_score is not None and (isinstance(self.min_score, bool) or not isinstance(self.min_score, (int, float))
                                           or not math.isfinite(self.min_score)):
            raise ConfigError(f"min_score must be a number, not {self.min_score!r}")
        if self.cutoff not in CUTOFFS:
            raise ConfigError(f"cutoff must be one of {', '.join(CUTOFFS)}, not {self.cutoff!r}")
        if self.sort not in SORTS:
            raise ConfigError(f"sort must be one of {', '.join(SORTS)}, not {self.sort!r}")
        check_templates(self.templates)
        return self

    def to_dict(self) -> dict:
        return {"terms": [t.to_dict() for t in self.terms], "k": self.k, "min_score": self.min_score,
                "cutoff": self.cutoff, "filters": self.filters.to_dict(), "sort": self.sort,
                "include_self": self.include_self, "templates": list(self.templates)}


def check_templates(templates) -> None:
    """A template is a text with one `{}` where the query's words go, e.g. "a photo of {}"."""
    if isinstance(templates, str) or not isinstance(templates, (tuple, list)):
        raise ConfigError("templates must be a list of texts, each with one {} (e.g. \"a photo of {}\")")
    if len(templates) > MAX_TEMPLATES:
        raise ConfigError(f"at most {MAX_TEMPLATES} prompt templates, not {len(templates)}")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(f"the prompt template {t!r} must hold {{}} exactly once, where the query's words go")
        check_query_text(t.replace("{}", "x"))


def apply_template(template: str, text: str) -> str:
    return template.replace("{}", text)


_SPLIT = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*:\s*(.*)$", re.S)


def parse_terms(text: str) -> tuple[Term, ...]:
    """`"2:a dog + on a beach - 0.5:at night"` -> (a dog x2, on a beach x1, at night x-0.5).

    An operator is a `+` or `-` with white space on both sides, so hyphenated words stay words; a
    leading `-` (no term before it) is an error rather than a silent positive term."""
    if not isinstance(text, str):
        raise ConfigError("a query must be a string")
    check_query_text(text)
    parts = _SPLIT.split(" " + text.strip() + " ")
    # parts: [first, op, term, op, term, ...]
    terms = [("+", parts[0])] + [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    out = []
    for sign, chunk in terms:
        words, weight = split_weight(chunk)
        if not words:
            raise ConfigError(f"the query {text!r} has an empty term (around a `{sign}`)")
        out.append(Term.text(words, -weight if sign == "-" else weight))
    return tuple(out)


def split_weight(chunk: str) -> tuple[str, float]:
    """`"0.5:at night"` -> ("at night", 0.5); words without a `WEIGHT:` prefix weigh 1."""
    chunk = chunk.strip()
    m = _WEIGHT.match(chunk)
    if m:
        return m.group(2).strip(), float(m.group(1))
    return chunk, 1.0
