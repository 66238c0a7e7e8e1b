"""Whether the Hugging Face hub can be reached, and whether a model is in its cache: light (no
torch), so that an unknown model offline is answered at once, not after the hub client's retries."""

from __future__ import annotations

import os


def hub_unreachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host (HF_ENDPOINT's) cannot be resolved within `timeout` s,
    or HF_HUB_OFFLINE is set: then a model that is not a local folder is looked for in the cache
    alone, at once, instead of after the hub client's retries (a minute offline)."""
    import socket
    import threading
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    resolved = []
    lookup = threading.Thread(target=lambda: resolved.append(_resolves(socket, host)), daemon=True)
    lookup.start()
    lookup.join(timeout)
    return not (resolved and resolved[0])


def _resolves(socket, host: str) -> bool:
    try:
        return bool(socket.getaddrinfo(host, 443))
    except OSError:
        return False


def model_cached(name: str) -> bool:
    """Whether the hub cache holds the model's config (what any load reads first)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repository name
        return False
