"""The full names of the gRPC services, from the generated descriptors (servers, clients, health)."""

from recipelens.v1 import embedder_pb2, search_pb2

EMBEDDER_SERVICE: str = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
RECIPE_SEARCH_SERVICE: str = search_pb2.DESCRIPTOR.services_by_name["RecipeSearch"].full_name
