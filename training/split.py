"""Deterministic recipe-level train / validation / test split.

A recipe's split is a function of a salted SHA-256 of its id, so it never changes when recipes are
added or removed elsewhere in the catalogue. Recipes that share a byte-identical photo are one group
and land in one split together (the group is placed by its smallest recipe id), so a photo can never
be seen in training and then queried in the test.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")


class EmptySplitError(ValueError):
    """A split came out with too few recipes to train or evaluate on."""


def content_hash(data: bytes) -> str:
    """The identity of a photo's bytes (what makes two files 'the same photo')."""
    return hashlib.sha256(data).hexdigest()


def unit_hash(text: str, salt: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``text``."""
    digest = hashlib.sha256(f"{salt}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class _DisjointSets:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            low, high = sorted((ra, rb))
            self.parent[high] = low  # the root is always the smallest id of the group


def duplicate_groups(photo_hashes: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """recipe id → group key: the smallest id among recipes linked by identical photos."""
    sets = _DisjointSets()
    first_owner: dict[str, str] = {}
    for recipe_id, hashes in photo_hashes.items():
        sets.find(recipe_id)
        for digest in hashes:
            owner = first_owner.setdefault(digest, recipe_id)
            sets.union(owner, recipe_id)
    return {recipe_id: sets.find(recipe_id) for recipe_id in photo_hashes}


@dataclass(frozen=True)
class RecipeSplit:
    """Which split every recipe belongs to, and its duplicate group."""

    assignment: dict[str, SplitName]
    groups: dict[str, str]

    def ids(self, split: SplitName) -> list[str]:
        return sorted(rid for rid, name in self.assignment.items() if name == split)

    def counts(self) -> dict[str, int]:
        return {name: len(self.ids(name)) for name in SPLITS}

    def require(self, split: SplitName, minimum: int, *, hint: str = "") -> list[str]:
        """The split's ids; :class:`EmptySplitError` with a clear message when there are too few."""
        ids = self.ids(split)
        if len(ids) < minimum:
            counts = ", ".join(f"{name} {count}" for name, count in self.counts().items())
            raise EmptySplitError(
                f"the {split} split has {len(ids)} recipe(s), at least {minimum} needed "
                f"(split of {len(self.assignment)} recipes: {counts}){hint}"
            )
        return ids


def split_recipes(
    photo_hashes: Mapping[str, Iterable[str]],
    *,
    train: float = 0.70,
    validation: float = 0.15,
    salt: str = "recipelens-split-v1",
) -> RecipeSplit:
    """Split recipes (id → content hashes of its photos) into train / validation / test."""
    groups = duplicate_groups(photo_hashes)
    assignment: dict[str, SplitName] = {}
    for recipe_id, group in groups.items():
        u = unit_hash(group, salt)
        assignment[recipe_id] = "train" if u < train else "validation" if u < train + validation else "test"
    return RecipeSplit(assignment=assignment, groups=groups)


def sample_recipes(recipe_ids: Iterable[str], limit: int | None, *, salt: str) -> list[str]:
    """At most ``limit`` ids, a stable sample by hash (not the first rows of a sorted file)."""
    ids = sorted(set(recipe_ids))
    if limit is None or limit >= len(ids):
        return ids
    return sorted(sorted(ids, key=lambda rid: unit_hash(rid, salt + "/sample"))[:limit])
