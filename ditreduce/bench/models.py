"""The bench's models: the resolver lives in ditreduce.model_specs (shared by every command); re-exported here."""
from ..model_specs import (PIXART_ALPHA, PIXART_CAPTION_TOKENS, SPELLINGS, BenchModelError, ModelSpec,  # noqa: F401
                           pixart_alpha, resolve_model, small_dit)
