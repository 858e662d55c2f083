"""Building the sandbox image, online (``FROM python:3.11-slim``) or offline (from debootstrap).

The shipped ``Dockerfile`` (next to this module) is the one recipe. Online it builds on the
official ``python:<version>-slim`` image. Offline, where no registry is reachable, it builds the
very same steps on a base imported from a Debian root filesystem made by
``debootstrap --variant=minbase --include=python3-minimal bookworm``, which needs root, the
``debootstrap`` package and Debian's package mirror. Results are cached: an image that exists
and carries the label of the current recipe is not rebuilt unless ``force`` is given.

Run ``python -m agent_runtime.sandbox.image --offline`` (or ``agent-runtime sandbox
build-image --offline``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import docker
from docker.errors import DockerException, ImageNotFound

from agent_runtime.errors import SandboxError, SandboxImageError
from agent_runtime.sandbox._engine import connect
from agent_runtime.sandbox.spec import DEFAULT_IMAGE

__all__ = [
    "DEFAULT_MIRROR",
    "DEFAULT_OFFLINE_BASE",
    "DEFAULT_PYTHON",
    "DEFAULT_SUITE",
    "ImageBuild",
    "build_image",
    "dockerfile_path",
    "main",
    "recipe_digest",
]

DEFAULT_PYTHON = "3.11"
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_OFFLINE_BASE = "agent-runtime-sandbox-base:bookworm"
LABEL_RECIPE = "io.agent-runtime.recipe"
LABEL_BASE = "io.agent-runtime.base"
_DEBOOTSTRAP_TIMEOUT = 900

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ImageBuild:
    """The outcome of ``build_image``.

    Attributes:
        image: The image reference.
        built: False when a cached image was kept.
        offline: Whether the debootstrap base was used.
        base: The base image the recipe was built on.
        seconds: Wall-clock time spent.
        image_id: The image id.
    """

    image: str
    built: bool
    offline: bool
    base: str
    seconds: float
    image_id: str


def dockerfile_path() -> Path:
    """The Dockerfile shipped inside the package."""
    return Path(str(resources.files("agent_runtime.sandbox").joinpath("Dockerfile")))


def recipe_digest(base: str) -> str:
    """A digest of the Dockerfile and its base: an image labelled with it is up to date."""
    digest = hashlib.sha256(dockerfile_path().read_bytes())
    digest.update(base.encode())
    return digest.hexdigest()[:16]


def _labels_of(client: docker.DockerClient, image: str) -> dict[str, str] | None:
    try:
        attrs = client.api.inspect_image(image)
    except ImageNotFound:
        return None
    return dict((attrs.get("Config") or {}).get("Labels") or {})


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def build_image(
    image: str = DEFAULT_IMAGE,
    *,
    offline: bool = False,
    force: bool = False,
    python: str = DEFAULT_PYTHON,
    mirror: str = DEFAULT_MIRROR,
    suite: str = DEFAULT_SUITE,
    client: docker.DockerClient | None = None,
    progress: Progress | None = None,
) -> ImageBuild:
    """Build the sandbox image (or keep the cached one).

    Args:
        image: The reference to tag.
        offline: Build on a debootstrap Debian base instead of ``python:<python>-slim``.
        force: Rebuild even when an up-to-date image exists (offline: the base too).
        python: The Python version of the online base image.
        mirror: The Debian mirror debootstrap uses (offline).
        suite: The Debian suite (offline).
        client: A connected Docker client (one is made otherwise).
        progress: Called with each line of progress.

    Returns:
        What was built or kept.

    Raises:
        DockerUnavailableError: When no engine answers.
        SandboxImageError: When a step fails (debootstrap missing or not root, build errors).
    """
    started = time.monotonic()
    own = client is None
    if client is None:
        client, _ = connect()
    try:
        base = DEFAULT_OFFLINE_BASE if offline else f"python:{python}-slim"
        digest = recipe_digest(base)
        labels = _labels_of(client, image)
        if labels is not None and labels.get(LABEL_RECIPE) == digest and not force:
            _say(progress, f"{image} is up to date (recipe {digest}); use --force to rebuild")
            return ImageBuild(
                image, False, offline, base, time.monotonic() - started, _image_id(client, image)
            )
        if offline:
            _offline_base(client, base, mirror=mirror, suite=suite, force=force, progress=progress)
        _build(client, image, base, digest, pull=not offline, progress=progress)
        return ImageBuild(
            image, True, offline, base, time.monotonic() - started, _image_id(client, image)
        )
    finally:
        if own:
            client.close()


def _image_id(client: docker.DockerClient, image: str) -> str:
    return str(client.api.inspect_image(image).get("Id", ""))


def _offline_base(
    client: docker.DockerClient,
    base: str,
    *,
    mirror: str,
    suite: str,
    force: bool,
    progress: Progress | None,
) -> None:
    if _labels_of(client, base) is not None and not force:
        _say(progress, f"reusing the debootstrap base {base}")
        return
    if os.geteuid() != 0:
        raise SandboxImageError(
            "an offline build runs debootstrap, which needs root: run it as root, or build "
            "online (without --offline) where a registry is reachable",
            image=base,
        )
    tool = shutil.which("debootstrap")
    if tool is None:
        raise SandboxImageError(
            "an offline build needs debootstrap: `apt-get install debootstrap`", image=base
        )
    with tempfile.TemporaryDirectory(prefix="agent-runtime-rootfs-", dir="/var/tmp") as work:
        rootfs = Path(work) / "rootfs"
        _say(progress, f"debootstrap {suite} from {mirror} (about 30 s)")
        made = subprocess.run(
            [tool, "--variant=minbase", "--include=python3-minimal", suite, str(rootfs), mirror],
            capture_output=True,
            text=True,
            timeout=_DEBOOTSTRAP_TIMEOUT,
            check=False,
        )
        if made.returncode != 0:
            tail = "\n".join((made.stdout + made.stderr).strip().splitlines()[-5:])
            raise SandboxImageError(f"debootstrap failed:\n{tail}", image=base)
        archive = Path(work) / "rootfs.tar"
        packed = subprocess.run(
            ["tar", "-C", str(rootfs), "-c", "-f", str(archive), "."],
            capture_output=True,
            text=True,
            timeout=_DEBOOTSTRAP_TIMEOUT,
            check=False,
        )
        if packed.returncode != 0:
            raise SandboxImageError(
                f"packing the root filesystem failed: {packed.stderr}", image=base
            )
        repository, _, tag = base.rpartition(":")
        _say(progress, f"docker import -> {base}")
        try:
            client.api.import_image_from_file(
                str(archive),
                repository=repository,
                tag=tag,
                changes=['CMD ["sleep", "infinity"]'],
            )
        except DockerException as exc:
            raise SandboxImageError(f"docker import failed: {exc}", image=base) from exc
        if _labels_of(client, base) is None:
            raise SandboxImageError("docker import produced no image", image=base)


def _build(
    client: docker.DockerClient,
    image: str,
    base: str,
    digest: str,
    *,
    pull: bool,
    progress: Progress | None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="agent-runtime-image-") as context:
        shutil.copyfile(dockerfile_path(), Path(context) / "Dockerfile")
        _say(progress, f"docker build {image} FROM {base}")
        try:
            stream = client.api.build(
                path=context,
                tag=image,
                buildargs={"BASE": base},
                labels={LABEL_RECIPE: digest, LABEL_BASE: base},
                pull=pull,
                rm=True,
                forcerm=True,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    raise SandboxImageError(
                        f"docker build of {image} failed: {str(chunk['error']).strip()}",
                        image=image,
                    )
                text = str(chunk.get("stream", "")).rstrip()
                if text:
                    _say(progress, text)
        except DockerException as exc:
            raise SandboxImageError(f"docker build of {image} failed: {exc}", image=image) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent_runtime.sandbox.image [--offline] [--force] [--image NAME]``."""
    parser = argparse.ArgumentParser(description="Build the agent-runtime sandbox image.")
    parser.add_argument("--offline", action="store_true", help="build from a debootstrap base")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="image reference to tag")
    args = parser.parse_args(argv)
    try:
        result = build_image(
            args.image,
            offline=args.offline,
            force=args.force,
            progress=lambda line: print(line, flush=True),
        )
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "built" if result.built else "cached"
    print(f"{result.image}: {state} ({result.seconds:.1f}s) from {result.base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
