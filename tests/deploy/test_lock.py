"""requirements/*.txt, the lock: exact, hash-checked versions within pyproject.toml's ranges.

The dev venv (make's stamp, hence CI) installs requirements/dev.txt, the image
requirements/image.txt, its wheel build requirements/build.txt. `make lock` refreshes them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import cast

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.helpers import ROOT

LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
STALE = "out of date with pyproject.toml: run `make lock` and commit requirements/"


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a lock written by `uv pip compile`."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continuation lines
    out: dict[str, tuple[str, int]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        spec, _, rest = line.partition(" ")
        name, sep, version = spec.partition("==")
        assert sep, f"{path.name}: not an exact pin: {line[:80]}"
        out[canonicalize_name(name)] = (version, rest.count("--hash=sha256:"))
    return out


def satisfied(requirements: list[str], lock: Path, extras: tuple[str, ...] = ("",)) -> None:
    locked = pins(lock)
    env = cast(dict[str, str], default_environment())
    for text in requirements:
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
            continue  # e.g. uvloop on Windows
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in {lock.name}: {STALE}"
        assert req.specifier.contains(locked[name][0], prereleases=True), (
            f"{lock.name} pins {req.name}=={locked[name][0]}, outside {req.specifier}: {STALE}"
        )


def test_every_pin_is_exact_and_hashed() -> None:
    for lock in ("dev.txt", "image.txt", "build.txt"):
        locked = pins(LOCKS / lock)
        assert locked, lock
        assert all(hashes for _, hashes in locked.values()), f"{lock}: a pin without --hash"


# The image is the runtime plus the SQS client (s3_queue_url in a container).
IMAGE_EXTRAS = ("sqs",)


def test_the_image_lock_satisfies_the_runtime_dependencies() -> None:
    optional = PYPROJECT["project"]["optional-dependencies"]
    satisfied(PYPROJECT["project"]["dependencies"], LOCKS / "image.txt")
    for extra in IMAGE_EXTRAS:
        satisfied(optional[extra], LOCKS / "image.txt", (extra,))
    # Nothing else: no other extra (embedded PostgreSQL, test tools) in the image.
    wanted = {
        canonicalize_name(Requirement(r).name)
        for r in [
            *PYPROJECT["project"]["dependencies"],
            *(r for e in IMAGE_EXTRAS for r in optional[e]),
        ]
    }
    others = {
        canonicalize_name(Requirement(r).name)
        for extra, reqs in optional.items()
        if extra not in IMAGE_EXTRAS
        for r in reqs
    }
    assert not (others - wanted) & set(pins(LOCKS / "image.txt"))


def test_the_dev_lock_satisfies_every_extra() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    satisfied(PYPROJECT["project"]["dependencies"], LOCKS / "dev.txt")
    for extra, requirements in extras.items():
        satisfied(requirements, LOCKS / "dev.txt", (extra,))


def test_the_image_runs_the_versions_ci_tests() -> None:
    dev, image = pins(LOCKS / "dev.txt"), pins(LOCKS / "image.txt")
    assert {n: v for n, (v, _) in image.items()} == {n: dev[n][0] for n in image}


def test_the_build_lock_pins_the_build_backend() -> None:
    satisfied(PYPROJECT["build-system"]["requires"], LOCKS / "build.txt")


@pytest.mark.parametrize("target", ["$(STAMP)"])
def test_make_installs_the_lock_with_hashes(target: str) -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, target
    assert "pip install --quiet --require-hashes -r requirements/dev.txt" in recipe.group(1)
    assert re.search(r"pip install --quiet --no-deps -e ", recipe.group(1))
    assert re.search(r"^lock:", makefile, re.M)
