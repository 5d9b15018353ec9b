"""Export to ONNX and TorchScript: outputs match PyTorch (randomly initialised networks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_runner import run_cli

from percepkit.errors import PercepkitError
from percepkit.inference.geometry import min_side
from percepkit.inference.tiles import pad_for_net
from percepkit.models.checkpoint import save_model
from percepkit.models.export import export
from percepkit.nets.transforms import JohnsonSR, johnson_style_fast
from percepkit.registry import TRANSFORMS


@pytest.mark.extra("export")
def test_onnx_matches_pytorch_at_two_sizes(tmp_path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = johnson_style_fast().eval()
    report = export(model, tmp_path / "m.onnx", "onnx")
    assert report.dynamic and len(report.input_sizes) == 2
    assert report.verified_with == "onnxruntime" and report.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 40, 56)
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.inference_mode():
        ref = model(x).numpy()
    assert np.abs(got - ref).max() < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["task"] == "style" and meta["stride"] == "4"


def test_torchscript_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = JohnsonSR(scale=2, channels=16).eval()
    report = export(model, tmp_path / "m.pt", "torchscript")
    assert report.max_abs_diff < 1e-5
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.rand(1, 3, 21, 17)
    with torch.inference_mode():
        assert (loaded(x) - model(x)).abs().max() < 1e-5


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.extra("export")),
                                 "torchscript"])
def test_size_dependent_transforms_need_a_fixed_size(tmp_path, fmt):
    model = TRANSFORMS.build({"name": "bicubic", "scale": 2})
    with pytest.raises(PercepkitError, match="--size"):
        export(model, tmp_path / "b.out", fmt)
    assert not (tmp_path / "b.out").exists()
    report = export(model, tmp_path / "b.out", fmt, size=(24, 20))
    assert not report.dynamic and report.input_sizes == [(24, 20)]


def test_style_sizes_must_be_multiples_of_the_stride(tmp_path):
    with pytest.raises(PercepkitError, match="multiples of 4"):
        export(johnson_style_fast().eval(), tmp_path / "m.pt", "torchscript", size=(30, 32))


@pytest.mark.extra("export")
def test_export_command(tmp_path, capsys):
    ckpt = save_model(tmp_path / "s.safetensors",
                      johnson_style_fast().state_dict(),
                      {"transform": {"name": "johnson_style_fast"}, "task": "style"})
    assert run_cli(["export", str(ckpt)]) == 0
    assert (tmp_path / "s.onnx").is_file()
    assert "matches PyTorch" in capsys.readouterr().out
    assert run_cli(["export", str(ckpt)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(["export", str(ckpt), "--format", "torchscript", "--size", "32x48"]) == 0
    assert (tmp_path / "s.pt").is_file()
    assert run_cli(["export", str(tmp_path / "none.safetensors")]) == 2
    assert run_cli(["export", str(ckpt), "--size", "big", "--overwrite"]) == 2


def test_onnx_export_without_the_onnx_package_is_one_paragraph(tmp_path, monkeypatch, capsys):
    import sys

    from percepkit.cli import main

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(SystemExit) as e:
        main(["export", "candy", "--format", "onnx", "-o", str(tmp_path / "c.onnx")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "pip install 'percepkit[export]'" in err and "torchscript" in err
    assert not (tmp_path / "c.onnx").exists()


def test_export_output_under_a_file_or_onto_a_folder_is_one_paragraph(tmp_path, capsys):
    from percepkit.cli import main

    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    for target, says in ((tmp_path / "a_file" / "m.pt", "is a file, not a folder"),
                         (tmp_path / "a_folder", "is a folder")):
        with pytest.raises(SystemExit) as e:
            main(["export", "candy", "--format", "torchscript", "-o", str(target)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and says in err and "Traceback" not in err


@pytest.mark.parametrize("align", [1, 4, 8])
def test_traced_padding_equals_the_predictors_at_every_size(align):
    from percepkit.inference.tiles import net_min_side, pad_to_multiple, pad_to_multiple_traced

    for h in (1, 2, 5, 9, 16, 17, 33):
        for w in (1, 3, 8, 15, 40):
            x = torch.rand(1, 2, h, w)
            want, _, _ = pad_to_multiple(x, align, net_min_side(align))
            got, gh, gw = pad_to_multiple_traced(x, align, net_min_side(align))
            assert (int(gh), int(gw)) == (h, w)
            assert torch.equal(got, want), (h, w)


def test_random_init_torchscript_export_takes_any_size(tmp_path):
    torch.manual_seed(0)
    model = johnson_style_fast().eval()
    export(model, tmp_path / "m.pt", "torchscript")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.rand(1, 3, 23, 41)
    padded, h, w = pad_for_net(x, 4, min_side(model))
    with torch.inference_mode():
        want = model(padded)[..., :h, :w]
        assert (loaded(x) - want).abs().max() < 1e-5


def test_export_into_an_unwritable_folder_or_a_full_disk_is_one_paragraph_and_leaves_nothing(
        tmp_path, monkeypatch, capsys):
    import errno
    import os

    from percepkit.runtime import files

    out = tmp_path / "ro" / "c.pt"
    real_access = os.access
    monkeypatch.setattr(files.os, "access",  # faked: the tests may run as root
                        lambda path, mode: mode != os.W_OK and real_access(path, mode))
    assert run_cli(["export", "candy", "--format", "torchscript", "-o", str(out)]) == 2
    assert "is not writable" in capsys.readouterr().err
    monkeypatch.setattr(files.os, "access", real_access)

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 (what a read-only folder says)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    assert run_cli(["export", "candy", "--format", "torchscript", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "permission denied" in err and "c.pt" in err and "Traceback" not in err
    monkeypatch.undo()
    # torch.jit.save writes by file name; the disk fills up half-way: no partial file is left
    monkeypatch.setattr(torch.jit, "save", _full_disk_save)
    assert run_cli(["export", "candy", "--format", "torchscript", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "Traceback" not in err
    assert list((tmp_path / "ro").iterdir()) == []


def _full_disk_save(module, path, **kwargs):  # noqa: ANN001, ANN003, ANN202
    import errno
    import os

    with open(path, "wb") as f:
        f.write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
