"""Style-net inference speed: percepkit's fast path vs a plain PyTorch implementation.

Usage (see docs/inference.md for our numbers)::

    python benchmarks/inference_speed.py                       # 256, 512, 1024; both nets
    python benchmarks/inference_speed.py --sizes 512 --nets johnson_style_fast --rounds 9
    python benchmarks/inference_speed.py --sr-memory           # peak RSS of an x4 upscale

* **plain**: the network written the way pytorch/examples' ``fast_neural_style`` writes its
  ``TransformerNet`` (``ConvLayer`` = reflection pad + conv, ``InstanceNorm2d(affine=True)``,
  ``ReLU``, residual blocks, nearest-x2 ``UpsampleConvLayer`` or the paper's stride-1/2
  transposed conv), NCHW, ``torch.inference_mode``, loaded with the same weights.
* **plain+keep**: the same, after :func:`percepkit.inference.keep_freed_memory` (so that the
  allocator's share of the difference is visible on its own).
* **percepkit**: :class:`percepkit.inference.Predictor` (the fused channels_last fast path,
  untiled), as ``percepkit stylize`` runs it, including its input/output handling.

Each configuration runs in its own worker process (the allocator setting is process-wide), all
get the same random image, rounds alternate between them, and the best round of each is
reported: the fairest comparison on a machine shared with other jobs. The outputs are compared
(max |difference| on [0, 1] images and the share of 8-bit pixels that differ). FLOPs are the
convolutions' nominal multiply-adds x 2; the peak is a square fp32 matrix product measured in
the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from percepkit.bench.speed_table import conv_flops, device_name, matmul_throughput
from percepkit.inference import Predictor
from percepkit.registry import TRANSFORMS


# -- the plain implementation, in the style of pytorch/examples/fast_neural_style -------------
class ConvLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int
                 ) -> None:
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        return out + residual


class UpsampleConvLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 upsample: int | None = None) -> None:
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, mode="nearest", scale_factor=self.upsample)
        return self.conv2d(self.reflection_pad(x))


class TransformerNet(nn.Module):
    """pytorch/examples' TransformerNet, with the paper's stride-1/2 transposed convolutions
    (``upsample='deconv'``) or its own resize-convolutions, and the [0, 1] output of
    percepkit's nets: (tanh(y) + 1) / 2."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 128), blocks: int = 5,
                 upsample: str = "deconv") -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = ConvLayer(3, c1, kernel_size=9, stride=1)
        self.in1 = nn.InstanceNorm2d(c1, affine=True)
        self.conv2 = ConvLayer(c1, c2, kernel_size=3, stride=2)
        self.in2 = nn.InstanceNorm2d(c2, affine=True)
        self.conv3 = ConvLayer(c2, c3, kernel_size=3, stride=2)
        self.in3 = nn.InstanceNorm2d(c3, affine=True)
        self.res = nn.Sequential(*[ResidualBlock(c3) for _ in range(blocks)])
        if upsample == "deconv":
            self.deconv1 = nn.ConvTranspose2d(c3, c2, 3, stride=2, padding=1, output_padding=1)
        else:
            self.deconv1 = UpsampleConvLayer(c3, c2, kernel_size=3, stride=1, upsample=2)
        self.in4 = nn.InstanceNorm2d(c2, affine=True)
        if upsample == "deconv":
            self.deconv2 = nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1)
        else:
            self.deconv2 = UpsampleConvLayer(c2, c1, kernel_size=3, stride=1, upsample=2)
        self.in5 = nn.InstanceNorm2d(c1, affine=True)
        self.deconv3 = ConvLayer(c1, 3, kernel_size=9, stride=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.in1(self.conv1(x)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        y = self.deconv3(y)
        return (torch.tanh(y) + 1) / 2


def plain_copy(model: nn.Module) -> TransformerNet:
    """A TransformerNet with ``model``'s weights (a percepkit johnson_style net)."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    c1, c2, c3 = convs[0].out_channels, convs[1].out_channels, convs[2].out_channels
    upsample = "deconv" if isinstance(convs[-3], nn.ConvTranspose2d) else "resize_conv"
    blocks = (len(convs) - 6) // 2
    plain = TransformerNet((c1, c2, c3), blocks, upsample)
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d)
    ours = [m for m in model.modules() if isinstance(m, kinds)]
    theirs = [m for m in plain.modules() if isinstance(m, kinds)]
    assert [type(m) for m in ours] == [type(m) for m in theirs], "layouts differ"
    for a, b in zip(ours, theirs):
        state = a.state_dict()
        if getattr(b, "bias", None) is not None and "bias" not in state:
            state["bias"] = torch.zeros_like(b.bias)  # percepkit drops biases before norms
        b.load_state_dict(state)
    return plain.eval()


# -- measurement --------------------------------------------------------------------------------
CONFIGS = {
    "plain": "TransformerNet, NCHW, default allocator",
    "plain+keep": "TransformerNet, NCHW, freed memory kept (keep_freed_memory)",
    "percepkit": "Predictor: fused channels_last fast path, freed memory kept",
}


def build(name: str, config: str) -> tuple[nn.Module, object]:
    """(percepkit model, callable image -> output) for one configuration."""
    from percepkit.inference import keep_freed_memory

    torch.manual_seed(0)
    model = TRANSFORMS.build({"name": name}).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # trained-looking norm affines instead of the 1/0 initialisation
        if isinstance(m, nn.InstanceNorm2d):
            m.weight.data = 1 + 0.2 * torch.randn(m.weight.shape, generator=g)
            m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
    if config == "percepkit":
        predictor = Predictor(model, "cpu", tile=0, keep_memory=True)
        return model, lambda x: predictor(x[0])[None]
    plain = plain_copy(model)
    if config == "plain+keep":
        keep_freed_memory()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return plain(x)

    return model, run


def worker(name: str, config: str, threads: int) -> None:
    """Serve timing requests on stdin: 'SIZE OUTFILE' -> seconds of one pass (output saved)."""
    torch.set_num_threads(threads)
    _, run = build(name, config)
    for line in sys.stdin:
        size, out = line.split()
        x = torch.rand(1, 3, int(size), int(size), generator=torch.Generator().manual_seed(2))
        t = time.perf_counter()
        y = run(x)
        seconds = time.perf_counter() - t
        if out != "-":
            torch.save(y, out)
        print(seconds, flush=True)


def measure(name: str, sizes: list[int], rounds: int, peak: float, threads: int) -> list[dict]:
    """Alternate rounds between one worker process per configuration; best round of each."""
    workers = {c: subprocess.Popen([sys.executable, __file__, "--worker", name, c,
                                    "--threads", str(threads)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True) for c in CONFIGS}

    def ask(config: str, size: int, out: str = "-") -> float:
        proc = workers[config]
        proc.stdin.write(f"{size} {out}\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    model = TRANSFORMS.build({"name": name}).eval()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for size in sizes:
                outs = {c: str(Path(tmp) / f"{c}.pt") for c in CONFIGS}
                for c in CONFIGS:
                    ask(c, size, outs[c])  # warm-up, and the output to compare
                times: dict[str, list[float]] = {c: [] for c in CONFIGS}
                for _ in range(rounds):
                    for c in CONFIGS:
                        times[c].append(ask(c, size))
                ref = torch.load(outs["plain"])[0]
                out = torch.load(outs["percepkit"])[0]
                flops = conv_flops(model, size, size)
                best = {c: min(t) for c, t in times.items()}
                q_ref = ref.clamp(0, 1).mul(255).round()
                q_out = out.clamp(0, 1).mul(255).round()
                row = {"net": name, "size": size, "gflop": flops / 1e9, "rounds": rounds,
                       **{f"{c}_s": best[c] for c in CONFIGS},
                       **{f"{c}_fraction_of_peak": flops / best[c] / peak for c in CONFIGS},
                       "speedup": best["plain"] / best["percepkit"],
                       "speedup_vs_plain_keep": best["plain+keep"] / best["percepkit"],
                       "max_abs_diff": float((out - ref).abs().max()),
                       "pixels_differing_8bit": float((q_ref != q_out).float().mean())}
                rows.append(row)
                cells = "  ".join(f"{c} {best[c] * 1000:7.1f} ms "
                                  f"({100 * row[f'{c}_fraction_of_peak']:3.0f}%)" for c in CONFIGS)
                print(f"{name:18s} {size:5d}  {cells}  x{row['speedup']:.2f} "
                      f"(x{row['speedup_vs_plain_keep']:.2f} vs plain+keep)  max|diff| "
                      f"{row['max_abs_diff']:.1e}  8-bit pixels differing "
                      f"{100 * row['pixels_differing_8bit']:.3f}%", flush=True)
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()
    return rows


def sr_memory(size: int, scale: int) -> dict:
    """Peak resident memory of ``percepkit upscale`` on a ``size``² image, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        from percepkit.models.checkpoint import save_model

        torch.manual_seed(0)
        net = TRANSFORMS.build({"name": "johnson_sr", "scale": scale}).eval()
        ckpt = save_model(Path(tmp) / "sr.safetensors", net.state_dict(),
                          {"transform": {"name": "johnson_sr", "scale": scale}, "task": "sr"})
        img = torch.rand(size, size, 3).mul(255).byte().numpy()
        Image.fromarray(img).save(Path(tmp) / "in.png")
        code = (
            "import resource, sys, time\n"
            "from percepkit.cli import main\n"
            "t = time.perf_counter()\n"
            "try:\n"
            f"    main(['upscale', {str(ckpt)!r}, {str(Path(tmp) / 'in.png')!r}, '-o', "
            f"{str(Path(tmp) / 'out.png')!r}, '-q'])\n"
            "except SystemExit as e:\n"
            "    assert not e.code\n"
            "print(time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        seconds, peak = done.stdout.split()[-2:]
        out_size = Image.open(Path(tmp) / "out.png").size
    return {"input": size, "scale": scale, "output": list(out_size),
            "peak_rss_gib": int(peak) / 1024**3, "seconds": float(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--nets", default="johnson_style,johnson_style_fast")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sr-memory", action="store_true",
                        help="Only measure peak memory of an x4 upscale of a 1024x1024 image.")
    parser.add_argument("--json", type=Path, default=None, help="Also write results here.")
    parser.add_argument("--worker", nargs=2, metavar=("NET", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(*args.worker, args.threads)
        return
    if args.sr_memory:
        result = sr_memory(1024, 4)
        print(json.dumps(result, indent=2))
    else:
        peak = matmul_throughput(torch.device("cpu"))
        print(f"{device_name(torch.device('cpu'))}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
        rows = []
        for name in args.nets.split(","):
            rows += measure(name, [int(s) for s in args.sizes.split(",")], args.rounds, peak,
                            args.threads)
        peak_after = matmul_throughput(torch.device("cpu"))
        print(f"fp32 matmul peak measured again after the runs: {peak_after / 1e9:.0f} GFLOP/s")
        result = {"device": device_name(torch.device("cpu")), "matmul_gflops": peak / 1e9,
                  "matmul_gflops_after": peak_after / 1e9, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
