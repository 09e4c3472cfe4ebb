"""Ingredient keywords: the lowercased words of the cleaned ingredients, as stored and as filtered on.

One normalisation, :func:`normal`, serves the index and the query: a recipe's ``ingredient_keywords``
payload holds every word of its cleaned ingredient lines in its written form and its normal form
("chillies" → ``chillies``, ``chilli``), and a filter term is reduced to normal forms
(:func:`query_keywords`), so "chilli", "chillies" and "Chilli" all meet. The store resolves those
normal forms against the keywords a collection actually holds (collections indexed before this form
hold singulars such as ``chilly``; :func:`normal` maps them to the same key). Quantities, units and
preparation words ("2 tbsp. finely chopped") are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")

STOPWORDS = frozenset(
    """
    a about an and as at be by can cup cups for from g gram grams in inch inches into is kg l lb lbs
    large medium ml more of oz ounce ounces or optional pinch plus pound pounds small such t taste
    tbsp tbs tsp tablespoon tablespoons teaspoon teaspoons the to very with divided chopped finely
    coarsely thinly sliced diced minced packed peeled cut piece pieces room temperature serving
    servings additional needed if you your
    """.split()
)


def normal(word: str) -> str:
    """One key for the spellings of a word: chilli/chillies/chilly → chilli, berry/berries → berri.

    Case-folded; plurals lose their ending (tomatoes → tomato, dishes → dish, eggs → egg) and a final
    -y/-ie becomes -i, so that "-ies" plurals meet both of their singulars. A key, not always a word.
    """
    word = word.casefold().replace("’", "'")
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "i"
    if word.endswith(("oes", "ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if word.endswith("s"):
        word = word[:-1]
    if word.endswith("ie"):
        return word[:-1]
    if word.endswith("y") and len(word) > 3:
        return word[:-1] + "i"
    return word


def words(text: str) -> list[str]:
    """Lowercased words of ``text`` without numbers, units and filler words."""
    found = (m.group(0).lower().replace("’", "'") for m in _WORD.finditer(text))
    return [w for w in found if len(w) > 1 and w not in STOPWORDS]


def ingredient_keywords(ingredients: Iterable[str]) -> list[str]:
    """Sorted distinct keywords (written and normal forms) of some ingredient lines."""
    keywords: set[str] = set()
    for line in ingredients:
        for word in words(line):
            keywords.add(word)
            keywords.add(normal(word))
    return sorted(keywords)


def query_keywords(term: str) -> list[str]:
    """The normal forms a filter term must match, all of them: "Chicken thighs" → ``chicken``, ``thigh``."""
    return [normal(w) for w in words(term)]
