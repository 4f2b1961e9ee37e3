"""A reduction method written the way a user writes one, outside the package: one file, registered by the code
that uses it (tests/test_method_abi.py), with state carried from call to call. `normkeep` keeps the k image tokens whose output had the largest
norm at the previous call (the state `norm`, taken from the site's output tokens by `observe`; to 1e-3,
ties to the earlier token), sorted by position; each pruned token copies the last kept token before it (the first kept token where none is)."""
import torch

from ditreduce.methods import Method, SiteContext, StateSpec
from ditreduce.regions import Selection, identity_selection


def copy_previous_kept(kept: torch.Tensor, n: int) -> torch.Tensor:
    """src [B, N, 1]: each token's position in `kept` (sorted), a pruned token the last kept one before it."""
    mask = torch.zeros(kept.shape[0], n, dtype=torch.long, device=kept.device).scatter(1, kept, 1)
    return (mask.cumsum(1) - 1).clamp(min=0)[..., None]


class NormKeep(Method):   # user code registers it: ditreduce.methods.register_method(NormKeep)
    name = "normkeep"
    static = False
    stateful = True
    reads_tokens = False

    def state_spec(self, ctx: SiteContext) -> StateSpec:
        norm = ((ctx.batch, ctx.n), torch.float32)
        return StateSpec(inputs={"norm": norm}, observed={"norm": norm})

    def selection(self, x, state, ctx: SiteContext, pairs=None):
        if ctx.k >= ctx.n and not ctx.forced:
            return identity_selection(ctx.n, device=state["norm"].device), {}
        # norms to 1e-3 (backends differ in the last bits), ties (zeros at a generation's first step) to the
        # earlier token: the same kept set on every backend
        norm = torch.round(state["norm"] * 1e3)
        order = torch.arange(ctx.n, 0, -1, device=norm.device, dtype=norm.dtype) / (ctx.n + 1)
        kept = torch.topk(norm + order, ctx.k, dim=1).indices.sort(dim=1).values
        return Selection(kept, copy_previous_kept(kept, ctx.n)), {}

    def observe(self, y, state, sel, ctx: SiteContext):
        return {"norm": y.float().norm(dim=-1)}
