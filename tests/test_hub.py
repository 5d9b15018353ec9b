"""The one cache and downloader (percepkit.models.hub) and its three users: weights, benchmark
sets, zoo models. No network: files are served by file:// URLs or a local HTTP server on
127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from percepkit.errors import MissingWeightsError, PercepkitError
from percepkit.models import hub, weights


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("PERCEPKIT_OFFLINE", raising=False)


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served``; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # noqa: ANN002 (the base class's signature)
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_hash_comes_from_the_caller_else_from_hex_digits_in_the_name():
    assert hub.hash_prefix("vgg16-397923af.pth") == "397923af"
    assert hub.hash_prefix("alexnet-owt-7be5be79.pth") == "7be5be79"
    assert hub.hash_prefix("my-style.safetensors") is None  # a word, not a hash
    assert hub.hash_prefix("net-cafe.pth") is None  # hex, but shorter than 8 digits
    assert hub.hash_prefix("net-397923AF.pth") is None  # hex digits are lowercase
    assert hub.expected_hash(Path("a-397923af.pth"), "ABCD" * 16) == "abcd" * 16
    assert hub.expected_hash(Path("a-397923af.pth"), None) == "397923af"


def test_http_download_is_checked_and_a_second_fetch_is_a_cache_hit(server, tmp_path, online):
    folder, base = server
    data = b"weights" * 1000
    (folder / "m.bin").write_bytes(data)
    dest = tmp_path / "cache" / "m.bin"
    assert hub.fetch(f"{base}/m.bin", dest, sha256=_sha(data)) == dest
    assert dest.read_bytes() == data
    (folder / "m.bin").unlink()  # a second fetch must not ask the server
    assert hub.fetch(f"{base}/m.bin", dest, sha256=_sha(data)) == dest


def test_a_damaged_cached_file_is_downloaded_again(server, tmp_path, online):
    folder, base = server
    data = b"the right bytes"
    (folder / "m.bin").write_bytes(data)
    dest = tmp_path / "m.bin"
    dest.write_bytes(b"half a fi")
    hub.fetch(f"{base}/m.bin", dest, sha256=_sha(data))
    assert dest.read_bytes() == data


def test_checksum_mismatch_keeps_nothing_and_leaves_the_old_file(tmp_path, online):
    src = tmp_path / "src-0123abcd.pth"
    src.write_bytes(b"other bytes")
    dest = tmp_path / "cache" / "src-0123abcd.pth"  # the name's hash prefix is checked
    with pytest.raises(hub.DownloadError, match="checksum mismatch") as err:
        hub.download(src.as_uri(), dest)
    assert err.value.reason.startswith(f"the download from {src.as_uri()} failed")
    assert not dest.exists() and not list(dest.parent.iterdir())  # no temporary file either
    dest.parent.mkdir(exist_ok=True)
    dest.write_bytes(b"old")
    with pytest.raises(hub.DownloadError):
        hub.download(src.as_uri(), dest, sha256="f" * 64)
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temporary file
    assert dest.read_bytes() == b"old"


def test_a_name_with_a_dash_and_no_hash_downloads(tmp_path, online):
    src = tmp_path / "my-style.safetensors"
    src.write_bytes(b"a plugin's model")
    dest = hub.download(src.as_uri(), tmp_path / "cache" / "my-style.safetensors")
    assert dest.read_bytes() == b"a plugin's model"


def test_offline_refuses_before_touching_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    src = tmp_path / "m.bin"
    src.write_bytes(b"x")
    with pytest.raises(hub.DownloadError) as err:
        hub.fetch(src.as_uri(), tmp_path / "cache" / "m.bin")
    assert err.value.reason == hub.OFFLINE_REASON
    assert not (tmp_path / "cache").exists()


def test_unreachable_server_is_a_download_error(tmp_path, online):
    with pytest.raises(hub.DownloadError, match=r"the download from .* failed \(") as err:
        hub.download("http://127.0.0.1:9/nothing.bin", tmp_path / "n.bin")  # discard port
    assert isinstance(err.value, PercepkitError) and not (tmp_path / "n.bin").exists()


def test_missing_is_one_sentence_saying_what_where_why_and_how():
    text = hub.missing("model 'x' (x.safetensors)", ["/a", "/b"], hub.OFFLINE_REASON,
                       "put the file in a folder listed in PERCEPKIT_MODELS")
    assert text == ("model 'x' (x.safetensors): not found in /a, /b, and downloads are disabled "
                    "(PERCEPKIT_OFFLINE=1); put the file in a folder listed in PERCEPKIT_MODELS.")


# -- the users of the one downloader ------------------------------------------------------------
def _features_file(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny torchvision-layout state dict saved under a name carrying its hash prefix."""
    state = {"features.0.weight": torch.arange(6.0).view(2, 3, 1, 1),
             "features.0.bias": torch.zeros(2), "classifier.0.weight": torch.ones(1)}
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    path = folder / f"vgg16-{_sha(tmp.read_bytes())[:8]}.pth"
    tmp.rename(path)
    return path, state


def test_imagenet_weights_download_through_the_hub_into_torch_cache(server, tmp_path, online,
                                                                   monkeypatch):
    folder, base = server
    path, state = _features_file(folder)
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    known = weights.KnownWeights("vgg16", f"{base}/{path.name}", ("vgg16_absent.safetensors",))
    monkeypatch.setitem(weights.TORCHVISION_WEIGHTS, "vgg16", known)
    got = weights.torchvision_features_state("vgg16")
    assert set(got) == {"features.0.weight", "features.0.bias"}
    assert torch.equal(got["features.0.weight"], state["features.0.weight"])
    assert (weights.torch_cache_dir() / path.name).is_file()


def test_imagenet_weights_with_wrong_bytes_are_missing_weights_in_one_sentence(
        tmp_path, online, monkeypatch):
    src = tmp_path / "vgg16-0123abcd.pth"
    src.write_bytes(b"not weights")
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    known = weights.KnownWeights("vgg16", src.as_uri(), ("vgg16_absent.safetensors",))
    monkeypatch.setitem(weights.TORCHVISION_WEIGHTS, "vgg16", known)
    with pytest.raises(MissingWeightsError) as err:
        weights.torchvision_features_state("vgg16")
    msg = str(err.value)
    assert msg.startswith("ImageNet weights for vgg16 (vgg16_absent.safetensors): not found in")
    assert "checksum mismatch" in msg and "set PERCEPKIT_WEIGHTS" in msg and "\n" not in msg
    assert not (weights.torch_cache_dir() / src.name).exists()


def test_http_404_is_a_download_error_naming_it(server, tmp_path, online):
    _, base = server
    with pytest.raises(hub.DownloadError, match="404") as err:
        hub.download(f"{base}/absent.bin", tmp_path / "absent.bin")
    assert err.value.reason.startswith(f"the download from {base}/absent.bin failed (HTTPError")
    assert not (tmp_path / "absent.bin").exists()
