"""steadyserve: a model server that no single request can break.

Custom models subclass :class:`Model`; see ``steadyserve.model`` for the recipe.
"""

from steadyserve.model import Model
from steadyserve.types import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    InferRequest,
    InferResponse,
    Tensor,
    TensorSpec,
    TokenDelta,
    tensor_from_numpy,
)

__version__ = "0.1.0"

__all__ = [
    "EmbedRequest",
    "EmbedResponse",
    "GenerateRequest",
    "InferRequest",
    "InferResponse",
    "Model",
    "Tensor",
    "TensorSpec",
    "TokenDelta",
    "__version__",
    "tensor_from_numpy",
]
