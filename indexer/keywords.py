"""Ingredient keywords: the lowercased words of the cleaned ingredients, as stored and as filtered on.

A recipe's ``ingredient_keywords`` payload holds every word of its cleaned ingredient lines in its
written form and its singular form ("tomatoes" → ``tomatoes``, ``tomato``); a filter term is reduced to
the singular form only, so "tomato" and "tomatoes" each find both spellings. Quantities, units and
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


def singular(word: str) -> str:
    """A crude English singular: tomatoes → tomato, berries → berry, dishes → dish, eggs → egg."""
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("oes", "ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lowercased words of ``text`` without numbers, units and filler words."""
    found = (m.group(0).lower().replace("’", "'") for m in _WORD.finditer(text))
    return [w for w in found if len(w) > 1 and w not in STOPWORDS]


def ingredient_keywords(ingredients: Iterable[str]) -> list[str]:
    """Sorted distinct keywords (written and singular forms) of some ingredient lines."""
    keywords: set[str] = set()
    for line in ingredients:
        for word in words(line):
            keywords.add(word)
            keywords.add(singular(word))
    return sorted(keywords)


def query_keywords(term: str) -> list[str]:
    """The keywords a filter term must match, all of them: "Chicken thighs" → ``chicken``, ``thigh``."""
    return [singular(w) for w in words(term)]
