"""A hub data set without the hub: one line naming a local alternative, at once, instead of half
a minute of datasets' retries and a warning for each. No test here touches the network."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from midalign.cli import main
from midalign.evaluation.tasks.topic import Topic

FORMS = (
    "sib200:DIR (SIB-200 <code>/<split>.tsv) | hf:Davlan/sib200 or hf:DIR (a copy of the repo, "
    "or of its parquet conversion, <code>/<split>/*.parquet)"
)
WHERE = "hf:Davlan/sib200 config eng_Latn split test"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _eval(tmp_path: Path) -> list[str]:
    return [
        "eval", "--model", "default", "--task", "topic", "--data", "hf:Davlan/sib200",
        "--langs", "en", "--out", str(tmp_path / "out"), "--no-progress",
    ]  # fmt: skip


def _never(*args, **kwargs):
    raise AssertionError("reached a model or datasets")


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No offline mode, whatever the environment the tests run in."""
    import datasets.config
    from huggingface_hub import constants

    for name in OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return monkeypatch


def _fails_at_once(tmp_path) -> None:
    """``midalign eval`` of the hub data set exits 2 well before datasets' 25 s of retries."""
    start = time.monotonic()
    assert main(_eval(tmp_path)) == 2
    assert time.monotonic() - start < 10  # datasets alone retries for 25 s


def test_hf_hub_offline_set_after_start_fails_at_once(online, tmp_path, capsys):
    online.setenv("HF_HUB_OFFLINE", "1")
    online.setattr("datasets.load_dataset", _never)
    online.setattr("midalign.cli.eval.load_model", _never)
    _fails_at_once(tmp_path)
    assert capsys.readouterr().err == (
        f"midalign eval: error: {WHERE}: HF_HUB_OFFLINE is set; give a local copy instead: "
        f"{FORMS}\n"
    )
    assert not (tmp_path / "out").exists()


def test_hf_hub_offline_tries_the_cache_then_names_the_alternative(online, tmp_path, capsys):
    """HF_HUB_OFFLINE as the libraries read it when set before the process starts: datasets
    looks in its cache (an empty one here) without a request, and the error is one line."""
    import datasets.config
    from huggingface_hub import constants

    online.setenv("HF_HUB_OFFLINE", "1")
    online.setattr(constants, "HF_HUB_OFFLINE", True)
    online.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    online.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    online.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    online.setattr("midalign.cli.eval.load_model", _never)
    _fails_at_once(tmp_path)
    assert capsys.readouterr().err == (
        f"midalign eval: error: {WHERE}: not in the local cache and HF_HUB_OFFLINE is set; give a "
        f"local copy instead: {FORMS}\n"
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_at_once_without_datasets(online, tmp_path, capsys):
    from huggingface_hub import constants

    online.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    online.setattr("datasets.load_dataset", _never)
    online.setattr("midalign.cli.eval.load_model", _never)
    _fails_at_once(tmp_path)
    assert capsys.readouterr().err == (
        f"midalign eval: error: {WHERE}: the hub is unreachable (ConnectError: [Errno 111] "
        "Connection refused); give a local copy instead, or set HF_HUB_OFFLINE=1 to use one "
        f"cached earlier: {FORMS}\n"
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_hub_that_answers_is_left_to_datasets(online, tmp_path):
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return [{"index_id": 7, "category": "sports", "text": "a goal"}]

    try:
        online.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        online.setattr("datasets.load_dataset", load_dataset)
        examples = Topic().read("hf:Davlan/sib200", ["en"], "test")
    finally:
        server.shutdown()
        server.server_close()
    # the repo's config on main (a card's configs, no longer a loading script)
    assert calls == [(("Davlan/sib200",), {"split": "test", "name": "eng_Latn"})]
    assert [(ex.id, ex.reference, ex.text) for ex in examples] == [("7", "sports", "a goal")]
