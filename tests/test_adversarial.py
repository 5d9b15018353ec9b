"""Adversarial training: the discriminators, the gan term, its recipe checks, the trainer's D
step, its logs and checkpoint parts, and exact resume after SIGKILL (all on the CPU)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_runner import run_cli
from test_train import QUIET, quiet, run

from percepkit.errors import CheckpointError, PercepkitError, RecipeError
from percepkit.losses import GANLoss, LossInputs
from percepkit.models.checkpoint import load_checkpoint
from percepkit.nets.discriminators import input_problem
from percepkit.recipes.recipe import load_recipe
from percepkit.registry import DISCRIMINATORS
from percepkit.train import Trainer, find_checkpoints

REPO = Path(__file__).resolve().parents[1]
TINY_GAN = REPO / "recipes" / "tiny_gan.yaml"
TINY_SR = REPO / "recipes" / "tiny_sr.yaml"


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- discriminators --------------------------------------------------------------------------------
def test_discriminators_have_the_parameter_counts_of_the_published_definitions_random_init():
    # Counted by hand, layer by layer, from BasicSR basicsr/archs/discriminator_arch.py
    # (XPixelGroup/BasicSR 8d56e3a): VGGStyleDiscriminator(num_in_ch=3, num_feat=64,
    # input_size=128): conv0_0 3*64*9+64, conv0_1 64*64*16 + bn 128, conv1_0 64*128*9 + bn 256,
    # conv1_1 128*128*16 + bn 256, conv2_0 128*256*9 + bn 512, conv2_1 256*256*16 + bn 512,
    # conv3_0 256*512*9 + bn 1024, conv3_1/conv4_1 512*512*16 + bn 1024, conv4_0 512*512*9
    # + bn 1024, linear1 8192*100+100, linear2 101.
    assert n_params(DISCRIMINATORS.build("vgg")) == 14_499_401
    # Same file, UNetDiscriminatorSN(num_in_ch=3, num_feat=64, skip_connection=True): conv0
    # 3*64*9+64, conv1 64*128*16, conv2 128*256*16, conv3 256*512*16, conv4 512*256*9, conv5
    # 256*128*9, conv6 128*64*9, conv7/conv8 64*64*9, conv9 64*9+1 (spectral norm's u/v vectors
    # are buffers, not parameters).
    assert n_params(DISCRIMINATORS.build("unet")) == 4_376_897
    # junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py, NLayerDiscriminator(input_nc=3,
    # ndf=64, n_layers=3, norm_layer=BatchNorm2d): 3*64*16+64, 64*128*16 + bn 256,
    # 128*256*16 + bn 512, 256*512*16 + bn 1024, 512*16+1 (no conv bias before BatchNorm).
    assert n_params(DISCRIMINATORS.build("patchgan")) == 2_765_633
    # the 256-px VGG variant adds conv5_0 512*512*9 + bn 1024 and conv5_1 512*512*16 + bn 1024
    assert n_params(DISCRIMINATORS.build({"name": "vgg", "input_size": 256})) == \
        14_499_401 + 512 * 512 * 25 + 2048


def test_discriminator_outputs_and_key_layout_random_init():
    x = torch.rand(2, 3, 128, 128)
    assert DISCRIMINATORS.build("vgg")(x).shape == (2, 1)
    assert DISCRIMINATORS.build("unet")(x).shape == (2, 1, 128, 128)
    assert DISCRIMINATORS.build("patchgan")(x).shape == (2, 1, 14, 14)  # 70x70 patches
    keys = set(DISCRIMINATORS.build("unet").state_dict())
    # the layout of published Real-ESRGAN discriminator weights (torch's spectral_norm)
    assert {"conv1.weight_orig", "conv1.weight_u", "conv1.weight_v", "conv9.bias"} <= keys
    assert {"conv0_0.weight", "bn0_1.running_mean", "linear2.bias"} <= \
        set(DISCRIMINATORS.build("vgg").state_dict())


def test_discriminators_say_which_sizes_they_take():
    assert "128x128" in input_problem("vgg", 96, 96)
    assert input_problem("vgg", 128, 128) is None
    assert input_problem({"name": "vgg", "input_size": 256}, 256, 256) is None
    assert "multiples of 8" in input_problem("unet", 100, 96)
    assert input_problem("unet", 32, 48) is None
    assert "at least 24x24" in input_problem("patchgan", 16, 64)
    assert input_problem("patchgan", 24, 24) is None
    with pytest.raises(ValueError, match="128x128"):
        DISCRIMINATORS.build("vgg")(torch.rand(1, 3, 64, 64))


# -- the gan term ----------------------------------------------------------------------------------
def _bce(x: torch.Tensor, label: float) -> torch.Tensor:
    """Binary cross-entropy of logits, written out."""
    p = torch.sigmoid(x.double())
    return -(label * torch.log(p) + (1 - label) * torch.log(1 - p)).mean()


def test_gan_term_formulas():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)

    def close(a, b):
        assert torch.allclose(a.double(), b.double(), atol=1e-6), (a, b)

    t = GANLoss(gan_type="vanilla")
    close(t.generator_loss(fake), _bce(fake, 1.0))
    close(t.discriminator_loss(real, fake), _bce(real, 1.0) + _bce(fake, 0.0))
    t = GANLoss(gan_type="lsgan", real_label_val=0.9)  # smoothing: D's real target only
    close(t.generator_loss(fake), ((fake - 1) ** 2).mean())
    close(t.discriminator_loss(real, fake), ((real - 0.9) ** 2).mean() + (fake ** 2).mean())
    t = GANLoss(gan_type="hinge")
    close(t.generator_loss(fake), -fake.mean())
    close(t.discriminator_loss(real, fake),
          torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())
    # relativistic average (ESRGAN, as BasicSR's ESRGANModel computes it)
    t = GANLoss(gan_type="vanilla", relativistic=True)
    rt, ft = real - fake.mean(), fake - real.mean()
    close(t.generator_loss(fake, real), (_bce(rt, 0.0) + _bce(ft, 1.0)) / 2)
    close(t.discriminator_loss(real, fake), (_bce(rt, 1.0) + _bce(ft, 0.0)) / 2)
    t = GANLoss(gan_type="hinge", relativistic=True)  # RaHinge
    close(t.generator_loss(fake, real), (torch.relu(1 + rt).mean() + torch.relu(1 - ft).mean()) / 2)


def test_gan_term_gradients_reach_only_the_generator_side():
    real = torch.randn(3, 1, requires_grad=True)
    fake = torch.randn(3, 1, requires_grad=True)
    GANLoss(relativistic=True).generator_loss(fake, real).backward()
    assert real.grad is None and fake.grad is not None and fake.grad.abs().sum() > 0


def test_gan_term_argument_checks_and_use_without_a_discriminator():
    with pytest.raises(ValueError, match="hinge"):
        GANLoss(gan_type="hinge", real_label_val=0.9)
    with pytest.raises(ValueError, match="real_label_val"):
        GANLoss(real_label_val=0.0)
    term = GANLoss()
    out = torch.rand(1, 3, 8, 8)
    with pytest.raises(PercepkitError, match="needs a discriminator"):
        term(LossInputs(out, out))
    net = DISCRIMINATORS.build({"name": "patchgan", "ndf": 4, "n_layers": 1})
    term.attach(net)
    assert torch.isfinite(term(LossInputs(torch.rand(1, 3, 8, 8), out)))
    term.active = False  # the warm-up
    assert term(LossInputs(out, out)).item() == 0.0


def test_the_discriminator_runs_under_the_trainers_autocast():
    from percepkit.train.adversarial import Adversary

    rec = load_recipe(TINY_GAN)
    loss = rec.build_loss()
    seen = []

    def bf16():
        seen.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    adv = Adversary(rec, loss, torch.device("cpu"), bf16, scaler_enabled=False)
    image = torch.rand(1, 3, 32, 32, requires_grad=True)
    logits = adv.discriminate(image)
    assert logits.dtype == torch.bfloat16
    logits.float().sum().backward()  # the generator's side: D's parameters were constants
    assert image.grad is not None
    assert all(p.grad is None and p.requires_grad for p in adv.module.parameters())
    before = seen[:]
    values = adv.train_step(5, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    assert len(seen) > len(before) and torch.isfinite(values).all()


# -- recipes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, expected", [
    (["discriminator="], "needs a discriminator"),
    (["discriminator=vgg"], "vgg takes 128x128 images (input_size: 128; 128 or 256), got 32x32"),
    (["losses.1={name: tv}"], "discriminator, optimizer_d, scheduler_d, train.d_steps, "
                              "train.gan_start: discriminator settings, but losses has no gan"),
    (["losses.2={name: gan}"], "losses[2]: a second gan term"),
    (["train.gan_start=8"], "train.gan_start: 8 warm-up steps leave no adversarial step"),
    (["train.d_steps=0"], "train.d_steps: expected a value at least 1"),
    (["optimizer_d.lr=-1"], "optimizer_d.lr: expected a value at least 0"),
])
def test_recipe_check_and_train_refuse_bad_adversarial_recipes(overrides, expected, tmp_path,
                                                               capsys):
    args = [a for o in overrides for a in ("--set", o)]
    if overrides == ["discriminator="]:  # no discriminator block at all
        text = TINY_GAN.read_text().replace("discriminator: {name: unet, num_feat: 8}\n", "")
        path = tmp_path / "no_d.yaml"
        path.write_text(text)
        args = []
    else:
        path = TINY_GAN
    for command in (["recipe", "check", "--skip-data"], ["train", "--out", str(tmp_path / "r")]):
        assert run_cli([*command, str(path), *args]) == 2
        err = capsys.readouterr().err
        assert expected in " ".join(err.split()) and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_a_gan_term_alone_cannot_warm_up():
    with pytest.raises(RecipeError, match="no other term"):
        load_recipe(TINY_GAN, ["losses=[{name: gan}]"])
    load_recipe(TINY_GAN, ["losses=[{name: gan}]", "train.gan_start=0"])


def test_a_plugin_discriminator_is_found_checked_and_trained(tmp_path):
    @DISCRIMINATORS.register("pk_test_disc")
    class TinyCritic(torch.nn.Module):
        """A plugin's discriminator: one logit per image, 32x32 inputs only (a linear head)."""

        def __init__(self, width: int = 4) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, width, 3, 2, 1)
            self.head = torch.nn.Linear(width * 16 * 16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.leaky_relu(self.conv(x), 0.2).flatten(1))

    try:
        assert "pk_test_disc" in DISCRIMINATORS.list("pk_*")
        with pytest.raises(RecipeError, match="pk_test_disc fails on 48x48 images"):
            load_recipe(TINY_GAN, ["discriminator={name: pk_test_disc}",
                                   "data.train.size=48"])
        with pytest.raises(RecipeError, match="unknown key 'depth'"):
            load_recipe(TINY_GAN, ["discriminator={name: pk_test_disc, depth: 2}"])
        _, result = run(TINY_GAN, tmp_path / "run", "discriminator={name: pk_test_disc}",
                        "train.iterations=2", "train.gan_start=0")
        state = load_checkpoint(result.last_checkpoint)[0]
        assert set(state["discriminator"]) == {"conv.weight", "conv.bias", "head.weight",
                                               "head.bias"}
    finally:
        DISCRIMINATORS.remove("pk_test_disc")


# -- training --------------------------------------------------------------------------------------
def test_tiny_gan_trains_logs_the_discriminator_and_checkpoints_it(tmp_path):
    trainer, result = run(TINY_GAN, tmp_path / "run")
    assert result.step == 8
    rows = [r.split(",") for r in (tmp_path / "run" / "log.csv").read_text().splitlines()]
    header = rows[0]
    assert header[3:9] == ["loss", "pixel", "gan", "d_loss", "d_real", "d_fake"]
    col = {k: header.index(k) for k in ("gan", "d_loss", "d_real", "d_fake")}
    for row in rows[1:3]:  # the warm-up (gan_start: 2): no gan term, D not trained
        assert float(row[col["gan"]]) == 0 and all(row[col[k]] == "" for k in col if k != "gan")
    for row in rows[3:]:
        assert all(math.isfinite(float(row[col[k]])) for k in col)
        assert float(row[col["gan"]]) > 0
    state, _ = load_checkpoint(result.last_checkpoint)
    assert {"discriminator", "optimizer_d", "scheduler_d"} <= set(state)
    assert "scaler_d" not in state  # no float16 AMP on the CPU
    d = trainer.adversary.module.state_dict()
    assert all(torch.equal(d[k], state["discriminator"][k]) for k in d)
    assert state["scheduler_d"]["last_epoch"] == 6  # one per adversarial step: 8 - gan_start


def test_the_generator_warm_up_leaves_the_discriminator_alone(tmp_path):
    rec = load_recipe(TINY_GAN, [*QUIET, "train.iterations=3", "checkpoint.every=1"])
    Trainer(rec, out=tmp_path / "run", console=quiet(), progress=False).run()
    s1, s2, s3 = (load_checkpoint(tmp_path / "run" / "checkpoints" / f"step_0000000{i}"
                                  ".safetensors")[0] for i in (1, 2, 3))
    d = s1["discriminator"]
    assert all(torch.equal(d[k], s2["discriminator"][k]) for k in d)  # gan_start: 2
    assert not s2["optimizer_d"]["state"] and s3["optimizer_d"]["state"]
    assert not all(torch.equal(d[k], s3["discriminator"][k]) for k in d)
    assert not all(torch.equal(s1["model"][k], s2["model"][k]) for k in s1["model"])


def _same_state(a: dict, b: dict) -> None:
    for part in ("model", "discriminator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for key, value in a["optimizer_d"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(torch.as_tensor(tensor),
                               torch.as_tensor(b["optimizer_d"]["state"][key][name])), name
    assert a["scheduler_d"] == b["scheduler_d"]


def test_a_gan_run_killed_with_sigkill_resumes_to_identical_g_and_d_weights(tmp_path):
    """Killed (SIGKILL, nothing saved at exit) in step 6's discriminator update, after the
    step-4 checkpoint: the resumed run ends with the same G and D weights, D optimiser state
    and losses as an uninterrupted run (U-Net D: spectral-norm vectors are state too)."""
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        from percepkit.train import adversarial
        real = adversarial.Adversary.train_step
        def dying(self, step, *args):
            if step == 5:  # 0-based: the sixth step, between the checkpoints of 4 and 8
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, step, *args)
        adversarial.Adversary.train_step = dying
        from percepkit.cli import main
        main(["train", {str(TINY_GAN)!r}, "--out", {str(out)!r}, "--no-progress",
              *[a for s in {QUIET!r} for a in ("--set", s)]])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert [s for s, _ in find_checkpoints(out)] == [4]

    _, full = run(TINY_GAN, tmp_path / "full")
    _, resumed = run(TINY_GAN, None, resume=out)
    assert resumed.start_step == 4
    assert resumed.losses == full.losses[4:]
    _same_state(load_checkpoint(full.last_checkpoint)[0],
                load_checkpoint(resumed.last_checkpoint)[0])
    def logged(run_dir: Path) -> list[list[str]]:  # step .. d_fake, without the timings
        return [r.split(",")[:9] for r in (run_dir / "log.csv").read_text().splitlines()]

    assert logged(out) == logged(tmp_path / "full")


def test_a_batchnorm_discriminator_with_two_d_steps_and_a_schedule_resumes_exactly(tmp_path):
    """PatchGAN (BatchNorm statistics), LSGAN, d_steps 2 and a cosine scheduler_d."""
    common = ["discriminator={name: patchgan, ndf: 8, n_layers: 1}",
              "losses.1={name: gan, gan_type: lsgan, real_label_val: 0.9, weight: 0.1}",
              "train.d_steps=2", "train.gan_start=1", "checkpoint.every=3",
              "scheduler_d={name: step, milestones: [2], gamma: 0.5}"]
    _, full = run(TINY_GAN, tmp_path / "full", *common, "train.iterations=6")
    _, first = run(TINY_GAN, tmp_path / "split", *common, "train.iterations=3")
    assert first.losses == full.losses[:3]
    _, second = run(TINY_GAN, None, *common, "train.iterations=6", resume=tmp_path / "split")
    assert second.losses == full.losses[3:]
    a = load_checkpoint(full.last_checkpoint)[0]
    b = load_checkpoint(second.last_checkpoint)[0]
    _same_state(a, b)
    assert a["scheduler_d"]["last_epoch"] == 5  # one per adversarial step
    assert a["optimizer_d"]["param_groups"][0]["lr"] == pytest.approx(5e-4)  # halved at 2
    assert len(a["optimizer_d"]["state"]) and all(
        int(v["step"]) == 10 for v in a["optimizer_d"]["state"].values())  # 5 x d_steps


def test_resuming_a_checkpoint_without_a_discriminator_is_refused(tmp_path):
    _, result = run(TINY_SR, tmp_path / "pixel", "train.iterations=1")
    with pytest.raises(CheckpointError, match="holds no discriminator"):
        run(TINY_GAN, tmp_path / "gan", resume=result.last_checkpoint)


def test_the_memory_estimate_counts_the_discriminator():
    from percepkit.train.memory_check import estimate_training_memory

    rec = load_recipe(TINY_GAN)
    estimate = estimate_training_memory(rec, (3, 8, 8), (3, 32, 32))
    assert estimate is not None  # the gan term ran on the meta device with its D
    d = DISCRIMINATORS.build({"name": "unet", "num_feat": 8})
    assert estimate.parameters == 4 * (n_params(rec.build_transform()) + n_params(d))  # float32


@pytest.mark.extra("models")  # its transform is spandrel:ESRGAN
def test_the_esrgan_recipe_has_esrgans_terms_weights_and_discriminator():
    rec = load_recipe(REPO / "recipes" / "esrgan_x4.yaml")
    terms = {t["name"]: t for t in rec.raw["losses"]}
    assert terms["pixel"] == {"name": "pixel", "kind": "l1", "weight": 1e-2}
    assert terms["feature"]["layers"] == ["conv5_3"] and terms["feature"]["weight"] == 1.0
    assert terms["feature"]["criterion"] == "l1"  # BasicSR's PerceptualLoss criterion
    assert terms["gan"] == {"name": "gan", "gan_type": "vanilla", "relativistic": True,
                            "weight": 5e-3}
    assert rec.raw["discriminator"]["name"] == "vgg"
    assert rec.raw["data"]["train"]["patch_size"] == 128  # the VGG-style D's input
    assert rec.raw["transform"]["name"] == "spandrel:ESRGAN"


@pytest.mark.extra("models")  # its transform is spandrel:ESRGAN
def test_the_realesrgan_recipe_has_its_terms_unet_and_second_order_degradation():
    rec = load_recipe(REPO / "recipes" / "realesrgan_x4.yaml")
    terms = {t["name"]: t for t in rec.raw["losses"]}
    assert terms["pixel"] == {"name": "pixel", "kind": "l1", "weight": 1.0}
    assert terms["feature"]["layer_weights"] == [0.1, 0.1, 1.0, 1.0, 1.0]
    assert terms["gan"] == {"name": "gan", "gan_type": "vanilla", "weight": 0.1}
    assert rec.raw["discriminator"]["name"] == "unet"
    train = rec.raw["data"]["train"]
    assert train["degradations"] == [{"name": "realesrgan", "scale": 4}]
    assert train["patch_size"] == 256 and rec.train.ema == 0.999


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available()
                    or not torch.distributed.is_gloo_available(), reason="needs gloo")
def test_two_gloo_processes_train_g_and_d_as_one_process(tmp_path):
    """2 processes x batch 1 == 1 x batch 2: D's gradients are averaged like G's. Standard
    (not relativistic) form and no BatchNorm: both would couple the images of a batch."""
    from test_ddp import torchrun

    common = ["transform.norm=none", "losses.1={name: gan, weight: 0.1}", "train.iterations=4",
              "train.gan_start=1", "train.val_every=1000", "checkpoint.every=4"]
    out = tmp_path / "ddp"
    proc = torchrun(str(TINY_GAN), "--out", str(out),
                    *[a for s in [*common, "train.batch_size=1"] for a in ("--set", s)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ddp = load_checkpoint(out / "checkpoints" / "step_00000004.safetensors")[0]
    _, single = run(TINY_GAN, tmp_path / "single", *common, "train.batch_size=2")
    one = load_checkpoint(single.last_checkpoint)[0]
    for part in ("model", "discriminator"):
        for key, value in one[part].items():
            torch.testing.assert_close(ddp[part][key], value, rtol=1e-4, atol=1e-5)
    rows = [r.split(",") for r in (out / "log.csv").read_text().splitlines()]
    d_loss = [float(r[rows[0].index("d_loss")]) for r in rows[2:]]
    single_rows = [r.split(",") for r in (tmp_path / "single" / "log.csv").read_text()
                   .splitlines()]
    assert d_loss == pytest.approx([float(r[single_rows[0].index("d_loss")])
                                    for r in single_rows[2:]], rel=1e-4)


def test_the_discriminators_float16_scaler_is_checkpointed_and_restored(tmp_path):
    """float16 autocast with D's own GradScaler (on the CPU here; on CUDA in real runs)."""
    from percepkit.models.checkpoint import Checkpoint, save_checkpoint
    from percepkit.train.adversarial import Adversary

    rec = load_recipe(TINY_GAN)

    def fp16():
        return torch.autocast("cpu", dtype=torch.float16)

    adv = Adversary(rec, rec.build_loss(), torch.device("cpu"), fp16, scaler_enabled=True)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    for step in (2, 3, 4):  # after tiny_gan's warm-up (gan_start: 2)
        assert torch.isfinite(adv.train_step(step, real, fake)).all()
    state = adv.state()
    assert state["scaler_d"]["scale"] == adv.scaler.get_scale()
    path = save_checkpoint(tmp_path / "d.safetensors", state, {})
    other = Adversary(rec, rec.build_loss(), torch.device("cpu"), fp16, scaler_enabled=True)
    other.load(Checkpoint.read(path))
    assert other.scaler.get_scale() == adv.scaler.get_scale()
    assert other.scaler.state_dict()["_growth_tracker"] == 3  # three updates without overflow
    for key, value in adv.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[key], value), key
    assert adv.train_step(5, real, fake).tolist() == other.train_step(5, real, fake).tolist()


def test_train_checks_the_first_target_when_the_recipe_does_not_state_the_crop(tmp_path,
                                                                              monkeypatch):
    """A dataset whose crop size recipe check cannot read (a plugin's): the trainer checks D
    against the first training target before it writes anything."""
    import percepkit.recipes.checks as checks

    monkeypatch.setattr(checks, "training_crop", lambda raw: None)
    rec = load_recipe(TINY_GAN, [*QUIET, "discriminator=vgg"])  # passes: size unknown
    with pytest.raises(RecipeError, match=r"vgg takes 128x128 .* training targets are 32x32"):
        Trainer(rec, out=tmp_path / "run", console=quiet(), progress=False).run()
    assert not (tmp_path / "run").exists()


def test_an_attached_discriminator_is_not_part_of_the_loss():
    rec = load_recipe(TINY_GAN)
    loss = rec.build_loss()
    before = set(loss.state_dict())
    loss.terms["gan"].attach(DISCRIMINATORS.build({"name": "unet", "num_feat": 4}))
    assert set(loss.state_dict()) == before and not list(loss.parameters())
    out = torch.rand(1, 3, 16, 16)
    total, parts = loss(out, out)
    assert torch.isfinite(total) and parts["gan"] > 0


@pytest.mark.filterwarnings("ignore:.*bf16")
def test_bf16_training_runs_d_in_bf16_and_resumes_exactly(tmp_path, monkeypatch):
    """train.precision bf16 (forced on this CPU): D's passes, in G's step and in its own, run
    under the same autocast; a split run still resumes exactly."""
    from percepkit.nets.discriminators import UNetDiscriminatorSN

    dtypes = []
    real_forward = UNetDiscriminatorSN.forward

    def recording(self, x):
        out = real_forward(self, x)
        if out.device.type != "meta":  # not the memory estimate's pass
            dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(UNetDiscriminatorSN, "forward", recording)
    common = ["train.precision=bf16", "train.gan_start=1", "checkpoint.every=2"]
    _, full = run(TINY_GAN, tmp_path / "full", *common, "train.iterations=4")
    # 3 adversarial steps: G's gan term (relativistic: outputs and targets), D's step (both)
    assert dtypes == [torch.bfloat16] * 12
    _, first = run(TINY_GAN, tmp_path / "split", *common, "train.iterations=2")
    _, second = run(TINY_GAN, None, *common, "train.iterations=4", resume=tmp_path / "split")
    assert first.losses + second.losses == full.losses
    _same_state(load_checkpoint(full.last_checkpoint)[0],
                load_checkpoint(second.last_checkpoint)[0])
    assert load_checkpoint(full.last_checkpoint)[1]["precision"] == "bf16"
