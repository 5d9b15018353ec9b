"""The user guides' commands run as written.

Convention: a fenced ```bash block in docs/*.md directly preceded by a ``<!-- tested -->`` line
is run by this test, block after block, in one fresh folder per guide. Options after a colon
say what a block needs, and it is skipped with the reason otherwise: ``<!-- tested: shared -->``
(the real images and weights of ../shared), ``<!-- tested: extra=export -->`` (an optional
extra). Each line is a command (``\\`` continues it, ``#`` starts a comment): ``percepkit ...``
runs in-process, ``python -c CODE`` runs CODE; ``VAR=value`` before a command sets it for that
command; ``*`` expands as bash would (a pattern that matches nothing stays as it is). Every
command must exit 0.

The folder holds what the guides' examples name: ``photo.png``, ``photo.jpg``, ``photos/`` (two
RGB images), ``hr/`` (two 48x48 images) and ``lr/`` (their MATLAB-bicubic x4 inputs), and
``recipes/`` (the repository's); ``../shared`` is the project's shared folder, as in a checkout
(``PERCEPKIT_WEIGHTS`` points into it for blocks marked ``shared`` only, ``PERCEPKIT_DATA`` is
unset). Downloads are off (``PERCEPKIT_OFFLINE=1``) and the cache is
the folder's own. Keep tested blocks cheap (listings, checks, a few training steps of tiny
recipes, tiny images): the whole file should run in well under a minute on 2 cores.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from conftest import REPO, SHARED, missing_extra
from PIL import Image

DOCS = REPO / "docs"
MARKER = re.compile(r"^<!-- tested(?::\s*(?P<needs>[^>]*?))?\s*-->\n```bash\n(?P<body>.*?)^```",
                    re.M | re.S)
#: the guides for users; each must have at least one tested block
GUIDES = ("evaluation.md", "inference.md", "losses.md", "models.md", "plugins.md",
          "precision.md", "tasks.md", "training.md", "zoo.md")


def marked_blocks(guide: Path) -> list[tuple[str, str]]:
    """(needs, body) of each tested bash block of ``guide``, in order."""
    return [(m["needs"] or "", m["body"]) for m in MARKER.finditer(guide.read_text())]


def commands(body: str) -> list[str]:
    """The command lines of a block: continuations joined, comments and blank lines dropped."""
    lines = body.replace("\\\n", " ").splitlines()
    return [line for line in lines if shlex.split(line, comments=True)]


def _why_skipped(needs: str) -> str | None:
    for need in needs.split():
        if need == "shared":
            if not (SHARED / "data").is_dir() or not (SHARED / "weights").is_dir():
                return f"needs the real images and weights of {SHARED} (../shared)"
        elif need.startswith("extra="):
            why = missing_extra(need.split("=", 1)[1])
            if why:
                return why
        else:
            raise AssertionError(f"unknown requirement {need!r} in a <!-- tested --> marker")
    return None


def _workdir(folder: Path) -> None:
    """The files the guides' examples name."""
    from percepkit.data.imresize import imresize

    rng = np.random.default_rng(0)

    def save(path: str, h: int, w: int) -> None:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / path)

    save("photo.png", 40, 48)
    save("photo.jpg", 40, 48)
    for name in ("a", "b"):
        save(f"photos/{name}.png", 32, 40)
        save(f"hr/{name}.png", 48, 48)
        hr = torch.from_numpy(np.array(Image.open(folder / f"hr/{name}.png"))).permute(2, 0, 1)
        lr = imresize(hr.double() / 255, scale=0.25).clamp(0, 1) * 255
        (folder / "lr").mkdir(exist_ok=True)
        Image.fromarray(lr.round().byte().permute(1, 2, 0).numpy()).save(folder / f"lr/{name}.png")
    (folder / "recipes").symlink_to(REPO / "recipes", target_is_directory=True)


def _run(line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    words = shlex.split(line, comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
    if words[:2] == ["python", "-c"]:
        exec(compile(words[2], line, "exec"), {})  # noqa: S102 (the guide's own code)
        return
    assert words[0] == "percepkit", f"only percepkit and python -c run here: {line}"
    args = [match for w in words[1:] for match in (sorted(glob.glob(w)) or [w] if "*" in w
                                                   else [w])]  # as bash: no match, the word
    code = run_cli(args)
    out = capsys.readouterr()
    assert code == 0, f"`{line}` exited {code}\n{out.out}\n{out.err}"


def test_every_guide_has_tested_commands():
    for name in GUIDES:
        assert marked_blocks(DOCS / name), f"docs/{name} has no <!-- tested --> bash block"
    for guide in DOCS.glob("*.md"):  # a marker that does not match would silently test nothing
        markers = re.findall(r"^<!-- tested", guide.read_text(), re.M)
        assert len(markers) == len(marked_blocks(guide)), \
            f"docs/{guide.name}: a <!-- tested --> marker is not directly before a ```bash block"


@pytest.mark.parametrize("name", GUIDES)
def test_guide_commands_run(name, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    _workdir(work)
    if SHARED.is_dir():  # the project's layout: ../shared beside the working folder
        (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    monkeypatch.setenv("PERCEPKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PERCEPKIT_DATA", raising=False)
    monkeypatch.setenv("PERCEPKIT_MODELS", "")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    skipped = []
    for needs, body in marked_blocks(DOCS / name):
        why = _why_skipped(needs)
        if why:
            skipped.append(why)
            continue
        # only blocks marked 'shared' may use the real weights: the others must run without
        weights = SHARED / "weights" if "shared" in needs.split() else tmp_path / "no-weights"
        monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(weights))
        for line in commands(body):
            _run(line, monkeypatch, capsys)
    if skipped and len(skipped) == len(marked_blocks(DOCS / name)):
        pytest.skip("; ".join(skipped))
