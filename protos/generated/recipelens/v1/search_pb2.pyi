from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Match(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MATCH_UNSPECIFIED: _ClassVar[Match]
    MATCH_NONE: _ClassVar[Match]
    MATCH_WEAK: _ClassVar[Match]
    MATCH_STRONG: _ClassVar[Match]
MATCH_UNSPECIFIED: Match
MATCH_NONE: Match
MATCH_WEAK: Match
MATCH_STRONG: Match

class SearchFilter(_message.Message):
    __slots__ = ("categories", "must_include_ingredients", "must_exclude_ingredients")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MUST_INCLUDE_INGREDIENTS_FIELD_NUMBER: _ClassVar[int]
    MUST_EXCLUDE_INGREDIENTS_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedScalarFieldContainer[str]
    must_include_ingredients: _containers.RepeatedScalarFieldContainer[str]
    must_exclude_ingredients: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, categories: _Optional[_Iterable[str]] = ..., must_include_ingredients: _Optional[_Iterable[str]] = ..., must_exclude_ingredients: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchByImageRequest(_message.Message):
    __slots__ = ("image", "top_k", "filter", "offset", "min_confidence")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    top_k: int
    filter: SearchFilter
    offset: int
    min_confidence: float
    def __init__(self, image: _Optional[bytes] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[SearchFilter, _Mapping]] = ..., offset: _Optional[int] = ..., min_confidence: _Optional[float] = ...) -> None: ...

class Recipe(_message.Message):
    __slots__ = ("id", "title", "ingredients", "instructions", "image_url", "category", "cleaned_ingredients", "source")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    INGREDIENTS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CLEANED_INGREDIENTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    ingredients: _containers.RepeatedScalarFieldContainer[str]
    instructions: str
    image_url: str
    category: str
    cleaned_ingredients: _containers.RepeatedScalarFieldContainer[str]
    source: str
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., ingredients: _Optional[_Iterable[str]] = ..., instructions: _Optional[str] = ..., image_url: _Optional[str] = ..., category: _Optional[str] = ..., cleaned_ingredients: _Optional[_Iterable[str]] = ..., source: _Optional[str] = ...) -> None: ...

class RecipeHit(_message.Message):
    __slots__ = ("rank", "score", "recipe", "matched_image_url", "confidence")
    RANK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    score: float
    recipe: Recipe
    matched_image_url: str
    confidence: float
    def __init__(self, rank: _Optional[int] = ..., score: _Optional[float] = ..., recipe: _Optional[_Union[Recipe, _Mapping]] = ..., matched_image_url: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class SearchByImageResponse(_message.Message):
    __slots__ = ("hits", "model_version", "collection", "took_ms", "warnings", "match")
    HITS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TOOK_MS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[RecipeHit]
    model_version: str
    collection: str
    took_ms: float
    warnings: _containers.RepeatedScalarFieldContainer[str]
    match: Match
    def __init__(self, hits: _Optional[_Iterable[_Union[RecipeHit, _Mapping]]] = ..., model_version: _Optional[str] = ..., collection: _Optional[str] = ..., took_ms: _Optional[float] = ..., warnings: _Optional[_Iterable[str]] = ..., match: _Optional[_Union[Match, str]] = ...) -> None: ...

class GetRecipeRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...
