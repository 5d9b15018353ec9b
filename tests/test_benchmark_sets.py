"""Eval datasets: the shipped Set5 round trip, published per-image values, locating/downloading,
odd image files and paired folders."""

from __future__ import annotations

import io
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import percepkit.data.benchmark_sets as bm
from percepkit.data.imresize import imresize
from percepkit.errors import ImageError, PercepkitError
from percepkit.evaluation.evaluate import build_metrics, evaluate
from percepkit.metrics import PSNR, SSIM
from percepkit.registry import DATASETS


def _bicubic_scores(ds, names=None, rgb=False):
    """{image: (psnr, ssim)} of MATLAB bicubic on ``ds`` through the evaluation engine."""
    if names is not None:
        ds = bm.SRBenchmark(ds.name, [p for p in ds.hr_paths if p.stem in names], ds.scale,
                            mod=ds.mod)
    wanted = ["psnr_rgb", "ssim_rgb"] if rgb else ["psnr", "ssim"]
    metrics, infos = build_metrics(wanted, crop_border=ds.scale)
    result = evaluate(lambda x: imresize(x, scale=ds.scale), [ds], metrics, infos)
    assert not result.sets[0].skipped
    return {r.name: (r.values[wanted[0]], r.values[wanted[1]]) for r in result.sets[0].rows}


# -- the shipped Set5 ----------------------------------------------------------------------------
def test_shipped_set5_round_trip_reproduces_published_x4_row():
    ds = DATASETS.build({"name": "set5", "scale": 4})
    assert len(ds) == 5 and "match the reference" in ds.checksum_note
    scores = _bicubic_scores(ds)
    psnr = np.mean([p for p, _ in scores.values()])
    ssim = np.mean([s for _, s in scores.values()])
    # Published bicubic x4 Set5: 28.42 (SRCNN, VDSR, ESRGAN), 28.43 / 0.8114 (Johnson et al.)
    assert 28.42 <= psnr <= 28.435, psnr
    assert ssim == pytest.approx(0.811, abs=0.0015)
    # Johnson et al.'s example image (baby): 31.78 / 0.8577
    assert scores["baby"][0] == pytest.approx(31.78, abs=0.015)
    assert scores["baby"][1] == pytest.approx(0.8577, abs=0.0002)


@pytest.mark.parametrize(("scale", "published"), [(2, (33.66, 0.9299)), (3, (30.39, 0.8682)),
                                                 (4, (28.42, 0.8104))])
def test_srcnn_y_only_pipeline_reproduces_srcnn_rows_exactly(scale, published):
    """SRCNN's MATLAB code resizes the uint8-rounded Y channel alone; doing the same with our
    imresize and SSIM gives its published bicubic Set5 rows to every printed digit. (Our default
    pipeline resizes RGB, as BasicSR does, and scores 0.01 dB / 0.001 SSIM higher.)"""
    from percepkit.metrics import rgb_to_y
    from percepkit.runtime.devices import threads  # small ops: one thread, as the engine does

    ds = bm.set5(scale=scale)
    psnr, ssim = PSNR("y", scale), SSIM("y", scale)
    values = []
    with threads(1):
        for i in range(len(ds)):
            y = rgb_to_y(ds.sample(i).hr.double()[None]).round() / 255
            sr = bm.quantize(imresize(imresize(y, scale=1 / scale), scale=scale))
            values.append((psnr(sr, y).item(), ssim(sr, y).item()))
    p, s = np.mean(values, axis=0)
    assert (round(p, 2), round(s, 4)) == published


def test_set5_samples_are_mod_cropped_and_lr_is_8bit():
    ds = bm.set5(scale=3)
    s = ds.sample(4)  # woman 228x344 -> 228x342
    assert s.hr.shape == (3, 342, 228) and s.lr.shape == (3, 114, 76)
    assert torch.equal(s.lr, (s.lr * 255).round() / 255)
    assert torch.equal(s.hr, (s.hr * 255).round() / 255)
    assert bm.set5(scale=4, mod=12).sample(4).hr.shape == (3, 336, 228)
    with pytest.raises(PercepkitError, match="multiple of the scale"):
        bm.set5(scale=4, mod=6)


def test_damaged_set5_is_refused(tmp_path, monkeypatch):
    src = bm.asset_path("Set5")
    shutil.copytree(src, tmp_path / "Set5")
    (tmp_path / "Set5" / "bird.png").write_bytes(b"not the bird")
    monkeypatch.setattr(bm, "asset_path", lambda *parts: tmp_path.joinpath(*parts))
    with pytest.raises(PercepkitError, match="bird.png"):
        bm.set5()


# -- published per-image values (needs ../shared) ---------------------------------------------
def test_basicsr_published_values_exactly(shared_data):
    """BasicSR's metrics README: x4 bicubic of GTmod12 Set14 images, crop 4, to 6 decimals
    (RGB values were computed by MATLAB; Y by BasicSR's numpy code, Y in float32)."""
    ds = bm.set14(scale=4, root=str(shared_data / "benchmarks"), mod=12, download=False)
    rgb = _bicubic_scores(ds, {"baboon", "comic"}, rgb=True)
    y = _bicubic_scores(ds, {"baboon", "comic"})
    assert rgb["baboon"][0] == pytest.approx(20.419710, abs=2e-6)
    assert rgb["baboon"][1] == pytest.approx(0.391853, abs=2e-6)
    assert y["baboon"][0] == pytest.approx(22.441898, abs=2e-6)
    assert y["baboon"][1] == pytest.approx(0.453097, abs=2e-6)
    assert rgb["comic"][0] == pytest.approx(20.239912, abs=2e-6)
    assert rgb["comic"][1] == pytest.approx(0.567738, abs=2e-6)
    assert y["comic"][0] == pytest.approx(21.720398, abs=2e-6)
    assert y["comic"][1] == pytest.approx(0.585511, abs=2e-6)


def test_single_channel_bridge_matches_published_value(shared_data):
    # bridge.png is 1-channel: scored on raw gray values, giving the published 23.15 (SelfExSR)
    set14 = bm.set14(root=str(shared_data / "benchmarks"), download=False)
    bridge = next(i for i, p in enumerate(set14.hr_paths) if p.stem == "bridge")
    assert set14.sample(bridge).hr.shape[0] == 1
    assert _bicubic_scores(set14, {"bridge"})["bridge"][0] == pytest.approx(23.15, abs=0.005)


@pytest.mark.slow
def test_set14_and_bsd100_means(shared_data):
    root = str(shared_data / "benchmarks")
    for ds, published in ((bm.set14(root=root, download=False), 26.00),
                          (bm.bsd100(root=root, download=False), 25.96)):
        scores = _bicubic_scores(ds)
        assert np.mean([p for p, _ in scores.values()]) == pytest.approx(published, abs=0.01)


# -- locating and downloading --------------------------------------------------------------------
def _fake_set(folder: Path, names=("a.png", "b.png")) -> Path:
    folder.mkdir(parents=True)
    for n in names:
        Image.new("RGB", (24, 16), (10, 20, 30)).save(folder / n)
    return folder


def test_locate_from_data_dir_env_and_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("PERCEPKIT_DATA", raising=False)
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    _fake_set(tmp_path / "data" / "Set14")
    _fake_set(tmp_path / "env" / "B100" / "HR")
    _fake_set(tmp_path / "cache" / "datasets" / "Set14")

    folder, how = bm.locate_benchmark("Set14", root=tmp_path / "data")
    assert folder == tmp_path / "data" / "Set14" and how == "--data-dir"
    assert bm.locate_benchmark("Set14", root=tmp_path / "data" / "Set14")[0] == folder
    monkeypatch.setenv("PERCEPKIT_DATA", str(tmp_path / "env"))
    assert bm.locate_benchmark("BSD100")[0] == tmp_path / "env" / "B100" / "HR"
    assert bm.locate_benchmark("Set14") == (tmp_path / "cache" / "datasets" / "Set14", "cache")
    ds = bm.set14(scale=2)
    assert len(ds) == 2 and "may not be comparable" in ds.checksum_note


def test_offline_and_missing_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.delenv("PERCEPKIT_DATA", raising=False)
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    with pytest.raises(PercepkitError) as err:
        bm.bsd100(root=str(tmp_path))
    msg = str(err.value)
    assert "BSD100/" in msg and "--data-dir" in msg and "PERCEPKIT_DATA" in msg
    assert msg.count(". ") == 0 and "\n" not in msg


def _provenance_mapping(shared_data: Path) -> dict[str, str]:
    """img_NNN.png -> <id>.png from the BSD100 PROVENANCE.md table (independent of our code)."""
    text = (shared_data / "benchmarks" / "BSD100" / "PROVENANCE.md").read_text()
    return dict(re.findall(r"(img_\d{3}\.png) \| (\d+\.png)", text))


def test_checked_download_with_a_fake_server(shared_data, tmp_path, monkeypatch):
    mapping = _provenance_mapping(shared_data)
    assert len(mapping) == 100
    served = []

    def fake_urlopen(url, timeout=None):
        name = url.rsplit("/", 1)[1]
        set_dir = "BSD100" if "bsd100" in url else "Set14"
        served.append(url)
        return io.BytesIO((shared_data / "benchmarks" / set_dir / mapping.get(name, name))
                          .read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.delenv("PERCEPKIT_DATA", raising=False)
    monkeypatch.delenv("PERCEPKIT_OFFLINE", raising=False)
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))
    folder, how = bm.locate_benchmark("BSD100", root=tmp_path / "nowhere")
    assert how == "downloaded" and len(list(folder.glob("*.png"))) == 100
    assert all("d382bc30d41c94ac72f8cb148d61cc4864b3b380" in u for u in served)
    n = len(served)
    assert bm.locate_benchmark("BSD100")[1] == "cache" and len(served) == n  # no refetch


def test_download_with_wrong_bytes_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"evil"))
    monkeypatch.delenv("PERCEPKIT_OFFLINE", raising=False)
    with pytest.raises(PercepkitError, match="checksum mismatch"):
        bm.download_benchmark("Set14", tmp_path / "Set14")
    assert not list((tmp_path / "Set14").iterdir())


def test_network_failure_says_where_to_put_the_folder(tmp_path, monkeypatch):
    def no_network(url, timeout=None):
        raise OSError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("PERCEPKIT_DATA", raising=False)
    monkeypatch.delenv("PERCEPKIT_OFFLINE", raising=False)
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PercepkitError, match=r"download .* failed .*put a folder named Set14/"):
        bm.set14()


# -- odd files, folders and pairs -----------------------------------------------------------------
def test_odd_images_are_handled_or_rejected_with_name(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8), "L").save(tmp_path / "g.png")
    Image.fromarray(rng.integers(0, 256, (20, 24, 4), dtype=np.uint8), "RGBA").save(
        tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (21, 25), dtype=np.uint16)).save(tmp_path / "d16.png")
    Image.new("RGB", (3, 40)).save(tmp_path / "thin.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    ds = DATASETS.build({"name": "hr_folder", "root": str(tmp_path), "scale": 4})
    by_name = {p.name: i for i, p in enumerate(ds.hr_paths)}
    g = ds.sample(by_name["g.png"])
    assert g.hr.shape == (1, 20, 24) and g.lr.shape == (1, 5, 6)
    rgba = ds.sample(by_name["rgba.png"])
    assert rgba.hr.shape == (3, 20, 24) and "alpha channel ignored" in rgba.notes
    d16 = ds.sample(by_name["d16.png"])
    assert d16.hr.shape == (1, 20, 24) and any("16-bit" in n for n in d16.notes)
    assert torch.equal(d16.hr, (d16.hr * 255).round() / 255)
    with pytest.raises(ImageError, match=r"thin\.png: 3x40 image is smaller than"):
        ds.sample(by_name["thin.png"])
    with pytest.raises(ImageError, match=r"broken\.png"):
        ds.sample(by_name["broken.png"])


def test_paired_folders(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    rng = np.random.default_rng(1)
    for name in ("x", "y"):
        Image.fromarray(rng.integers(0, 256, (33, 42, 3), dtype=np.uint8)).save(
            hr_dir / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(lr_dir / "x_x4.png")
    Image.fromarray(rng.integers(0, 256, (8, 11, 3), dtype=np.uint8)).save(lr_dir / "yx4.png")
    # the sizes are checked before anything is scored: 11*4 = 44 > 42, a wrong pair
    with pytest.raises(PercepkitError, match=r"--lr-dir .*1 pair\(s\) where the target is not 4 "
                                             r"x the input.*yx4\.png 11x8 vs y\.png 42x33"):
        bm.paired_folder(str(lr_dir), str(hr_dir), scale=4)
    Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(lr_dir / "yx4.png")
    ds = bm.paired_folder(str(lr_dir), str(hr_dir), scale=4)
    x = ds.sample(0)
    assert x.hr.shape == (3, 32, 40) and x.lr.shape == (3, 8, 10)  # HR mod-cropped
    (lr_dir / "yx4.png").unlink()
    with pytest.raises(PercepkitError, match=r"1 target\(s\) in .* have no input in .*y\.png"):
        bm.paired_folder(str(lr_dir), str(hr_dir), scale=4)


def test_registered_names():
    names = DATASETS.list()
    for name in ("set5", "set14", "bsd100", "hr_folder", "paired_folder"):
        assert name in names


def test_cpu_threads_leave_out_the_cores_others_use(monkeypatch):
    """The default thread count is torch's less the cores other processes keep busy (measured
    from /proc/stat where it exists); --threads wins; never below 1."""
    import torch

    from percepkit.runtime import devices

    assert devices.free_threads(2, 2, None) == 2  # not measurable: torch's choice
    assert devices.free_threads(2, 2, 0.2) == 2
    assert devices.free_threads(2, 2, 1.0) == 1  # one core taken by someone else
    assert devices.free_threads(2, 2, 3.9) == 1
    assert devices.free_threads(8, 16, 4.0) == 8  # more idle cores than torch's count
    busy = devices.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (__import__("os").cpu_count() or 1) + 1e-9
    old = torch.get_num_threads()
    try:
        monkeypatch.setattr(devices, "busy_cores", lambda: 5.0)
        assert devices.use_cpu_threads(None) == 1 == torch.get_num_threads()
        assert devices.use_cpu_threads(3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(old)
