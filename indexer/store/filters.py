"""Search filters: what a caller asks for, its caps, and its resolution against a collection's own words.

A :class:`SearchFilter` is checked when it is made (caps: :class:`InvalidFilter`). A store resolves it
(:meth:`ResolvedFilter.of`) against the :class:`Vocabulary` of the collection searched: categories
case-insensitively, ingredient terms through :func:`indexer.keywords.normal`, each term that matches
nothing reported as a warning rather than dropped in silence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from indexer.keywords import normal, query_keywords

# Caps of one filter: beyond them a request is refused (InvalidFilter), never slowly answered.
MAX_FILTER_TERMS = 64  # categories + must_include + must_exclude together
MAX_TERM_CHARS = 100
MAX_FILTER_BYTES = 4096  # UTF-8 bytes of every term together


class InvalidFilter(ValueError):
    """A filter over the caps or of the wrong shape: the caller's mistake (INVALID_ARGUMENT / 400)."""


@dataclass(frozen=True)
class SearchFilter:
    """Category in ``categories`` (any), every ``must_include`` ingredient, none of ``must_exclude``.

    Categories match case-insensitively. Ingredient terms are free text ("Chicken thighs"), reduced to
    normal forms (:func:`indexer.keywords.query_keywords`) and matched against the collection's own
    keywords, so "chilli" excludes "chillies". Constructing a filter over the caps
    (:data:`MAX_FILTER_TERMS` terms, :data:`MAX_TERM_CHARS` characters each, :data:`MAX_FILTER_BYTES`
    in all) raises :class:`InvalidFilter`.
    """

    categories: tuple[str, ...] = ()
    must_include: tuple[str, ...] = ()
    must_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        total_terms = total_bytes = 0
        for field_name in ("categories", "must_include", "must_exclude"):
            value = getattr(self, field_name)
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise InvalidFilter(f"filter {field_name}: expected a list of strings")
            terms = tuple(value)
            for term in terms:
                if not isinstance(term, str):
                    raise InvalidFilter(f"filter {field_name}: {term!r} is not a string")
                if len(term) > MAX_TERM_CHARS:
                    raise InvalidFilter(
                        f"filter {field_name}: a term of {len(term)} characters (at most {MAX_TERM_CHARS})"
                    )
                total_bytes += len(term.encode("utf-8"))
            total_terms += len(terms)
            object.__setattr__(self, field_name, tuple(t.strip() for t in terms if t.strip()))
        if total_terms > MAX_FILTER_TERMS:
            raise InvalidFilter(f"filter of {total_terms} terms (at most {MAX_FILTER_TERMS})")
        if total_bytes > MAX_FILTER_BYTES:
            raise InvalidFilter(f"filter of {total_bytes} bytes (at most {MAX_FILTER_BYTES})")

    def is_empty(self) -> bool:
        return not (self.categories or self.must_include or self.must_exclude)


@dataclass(frozen=True)
class Vocabulary:
    """What a collection's filters can match: normal form → the spellings stored."""

    categories: dict[str, tuple[str, ...]]  # casefolded category → stored categories
    keywords: dict[str, tuple[str, ...]]  # normal(keyword) → stored ingredient keywords

    @classmethod
    def of(cls, categories: Iterable[str], keywords: Iterable[str]) -> Vocabulary:
        cats: dict[str, set[str]] = {}
        for c in categories:
            if c:
                cats.setdefault(c.strip().casefold(), set()).add(c)
        kws: dict[str, set[str]] = {}
        for k in keywords:
            kws.setdefault(normal(k), set()).add(k)
        return cls(
            {k: tuple(sorted(v)) for k, v in cats.items()}, {k: tuple(sorted(v)) for k, v in kws.items()}
        )


@dataclass(frozen=True)
class ResolvedFilter:
    """A :class:`SearchFilter` in a collection's own spellings (plus the normal forms themselves).

    Each group also holds the request's own normal form (categories: its spelling in the usual cases),
    so a point stored after the vocabulary was read still matches: a vocabulary read a moment ago
    makes a warning late, not a filter wrong (a category spelled in unusual case may be missed until
    the vocabulary is read again — on Qdrant Edge at the next write, on a server within 30 s).
    """

    categories: tuple[str, ...] | None = None  # None: any category
    include: tuple[tuple[str, ...], ...] = ()  # each: any of these stored keywords
    exclude: tuple[tuple[tuple[str, ...], ...], ...] = ()  # per term: every group (any of) present
    warnings: tuple[str, ...] = ()

    @classmethod
    def of(cls, search_filter: SearchFilter | None, vocabulary: Callable[[], Vocabulary]) -> ResolvedFilter:
        if search_filter is None or search_filter.is_empty():
            return cls()
        vocab = vocabulary()
        warnings: list[str] = []
        categories: tuple[str, ...] | None = None
        if search_filter.categories:
            found: set[str] = set()
            for c in search_filter.categories:
                spelled = vocab.categories.get(c.casefold(), ())
                if not spelled:
                    warnings.append(f"category {c!r} matches no category in the collection")
                found.update({*spelled, c, c.casefold(), c.title(), c.capitalize()})
            categories = tuple(sorted(found))
        include = [g for term in search_filter.must_include for g in _term_groups(term, vocab, warnings)]
        exclude = [
            tuple(groups)
            for term in search_filter.must_exclude
            if (groups := _term_groups(term, vocab, warnings))
        ]
        return cls(categories, tuple(include), tuple(exclude), tuple(warnings))

    def is_empty(self) -> bool:
        return self.categories is None and not self.include and not self.exclude


def _term_groups(term: str, vocab: Vocabulary, warnings: list[str]) -> list[tuple[str, ...]]:
    """One group per word of ``term``: the stored keywords of its normal form, and that form itself."""
    keys = query_keywords(term)
    if not keys:
        warnings.append(f"ingredient {term!r} has no word to match; ignored")
        return []
    if not all(k in vocab.keywords for k in keys):
        warnings.append(f"ingredient {term!r} matches no ingredient in the collection")
    return [tuple(sorted({*vocab.keywords.get(k, ()), k})) for k in keys]
