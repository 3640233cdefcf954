"""metarec: meta-learning for cold-start recommendation."""

__version__ = "0.1.0"


def load(path, data_root=None, device="cpu"):
    """A trained checkpoint as a recommender for new users: metarec.serve.api.load (imported only when called)."""
    from metarec.serve.api import load as _load

    return _load(path, data_root=data_root, device=device)
