"""The training item context's share of the pool (metarec/data/item_context.py): the flat pool selects the
same ratings, in the same order, as the padded pool rows of the chosen users."""
import torch
from conftest import ML100K, needs_ml100k


@needs_ml100k()
def test_flat_pool_selects_the_padded_rows_of_the_chosen_users():
    from metarec.config.compose import compose
    from metarec.data import build_source
    cfg = compose(["device=cpu", f"data.root={ML100K}", "data.item_stats=true", "data.heavy_users=true"])
    source = build_source(cfg.data, torch.device("cpu"), cfg.seed, progress=False)
    g = torch.Generator().manual_seed(0)
    for share in (0.05, 0.5, 1.0):
        chosen = torch.rand(len(source.pool_users), generator=g) < share
        want = source.pool[chosen][source.pool_mask[chosen].bool()]  # the padded rows, row by row
        assert torch.equal(source.pool_flat[chosen[source.pool_owner]], want)
