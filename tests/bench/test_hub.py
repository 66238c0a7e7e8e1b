"""Offline, a model that is neither a folder nor in the Hugging Face cache is one line at once, not
a minute of the hub client's retries; a cached one is found without the network."""

import socket

import pytest
from mtlbench.bench import backbone, hub
from mtlbench.bench.cli import main
from mtlbench.tasks.errors import UserError


@pytest.fixture
def offline(monkeypatch):
    def no_name(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_name)


def test_the_hub_is_unreachable_when_its_name_does_not_resolve_or_offline_is_set(monkeypatch, offline):
    assert hub.hub_unreachable()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [("family", "type", 6, "", ("1.2.3.4", 443))])
    assert not hub.hub_unreachable()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable()


def test_a_model_in_the_hub_cache_is_found_without_the_network(monkeypatch, tmp_path):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--some-org--some-model" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--some-org--some-model" / "refs").mkdir()
    (tmp_path / "models--some-org--some-model" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub.model_cached("some-org/some-model") and not hub.model_cached("some-org/other-model")


def test_an_unknown_model_offline_is_one_line_before_anything_loads(offline, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "quick", "--model", "no-org/no-model", "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        "mtlbench: error: --model no-org/no-model: not a local folder, not in the Hugging Face cache, and the hub "
        "cannot be reached (offline); give a folder with a saved model, or 'tiny'")
    assert not out.exists()
    with pytest.raises(UserError, match="tokenizer of model 'no-org/no-model': not a local folder, not in the Hugging "
                                        "Face cache, and the hub cannot be reached"):
        backbone.load_tokenizer("no-org/no-model")  # the API's path: the cache alone, at once
