"""A hard cap on the sandbox workspace: a loop-mounted ext4 image of exactly ``disk`` bytes.

Docker's ``--storage-opt size`` only works on overlay2 over xfs with project quotas; on the common
ext4 hosts the engine refuses it. A sparse file formatted as ext4 and loop-mounted on the host
really caps what the sandbox can write (it gets ENOSPC at ``disk`` bytes, and the host file can
never grow past that), and it keeps the files on the host, where the runtime copies them back
even after the container was killed. It needs root (``mount -o loop``); without it the sandbox
falls back to a size-capped tmpfs inside the container (see ``DockerSandbox``).

Each disk lives in its own directory holding ``disk.img``, the mount point ``mnt`` and an
``owner.json`` naming the installation and the creating process, so that the sweep can unmount
and delete the disks of a runtime that died.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent_runtime.errors import SandboxError

__all__ = ["LoopDisk", "loop_disks_supported"]

_HOST_RESERVE = 64 << 20  # never let a workspace image take the host's last 64 MiB
_TOOL_TIMEOUT = 30.0


def loop_disks_supported() -> tuple[bool, str]:
    """Tell whether loop-mounted workspaces can be made here, and why not when they cannot."""
    if os.geteuid() != 0:
        return False, "loop mounts need root"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return False, f"{tool} is not installed"
    if not Path("/dev/loop-control").exists():
        return False, "/dev/loop-control is missing (no loop device support)"
    return True, "root with loop devices"


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False)


@dataclass(frozen=True, slots=True)
class LoopDisk:
    """One mounted workspace image.

    Attributes:
        root: The directory holding the image, the mount point and ``owner.json``.
    """

    root: Path

    @property
    def image(self) -> Path:
        """The sparse ext4 image file."""
        return self.root / "disk.img"

    @property
    def mount(self) -> Path:
        """Where the image is mounted on the host (bind-mounted at ``/workspace``)."""
        return self.root / "mnt"

    @classmethod
    def create(
        cls, disks_dir: Path, size: int, *, uid: int, gid: int, owner: str, creator: str
    ) -> LoopDisk:
        """Make, format and mount a fresh image of ``size`` bytes owned by ``uid:gid``.

        Args:
            disks_dir: The directory under which the disk's own directory is made.
            size: Capacity in bytes.
            uid: Owner of the filesystem root (the sandbox user).
            gid: Group of the filesystem root.
            owner: The installation's owner id (recorded for the sweep).
            creator: The creating process identity (recorded for the sweep).

        Returns:
            The mounted disk.

        Raises:
            SandboxError: When the host lacks the space, or formatting or mounting fails.
        """
        disk = cls.allocate(disks_dir, size, owner=owner, creator=creator)
        disk.format_and_mount(uid=uid, gid=gid)
        return disk

    @classmethod
    def allocate(cls, disks_dir: Path, size: int, *, owner: str, creator: str) -> LoopDisk:
        """Reserve the directory, the sparse image and the mount point (not yet mounted).

        Split from ``format_and_mount`` so a container can be created (it only needs the mount
        point's path) while the image is formatted.

        Raises:
            SandboxError: When the host lacks the space.
        """
        disks_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        free = shutil.disk_usage(disks_dir).free
        if free < size + _HOST_RESERVE:
            raise SandboxError(
                f"the host has {free} bytes free under {disks_dir}, not enough for a {size}-byte "
                "sandbox workspace plus a 64 MiB reserve: free some space or lower "
                "SandboxSpec.disk"
            )
        disk = cls(disks_dir / secrets.token_hex(6))
        disk.root.mkdir(mode=0o700)
        try:
            (disk.root / "owner.json").write_text(json.dumps({"owner": owner, "creator": creator}))
            with open(disk.image, "wb") as fh:
                fh.truncate(size)
            disk.mount.mkdir(mode=0o755)
        except BaseException:
            disk.destroy()
            raise
        return disk

    def format_and_mount(self, *, uid: int, gid: int) -> None:
        """Format the image as ext4 with its root owned by ``uid:gid`` and mount it.

        Raises:
            SandboxError: When formatting or mounting fails (the disk is destroyed).
        """
        try:
            made = _run(
                [
                    "mkfs.ext4",
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-O",
                    "^has_journal",
                    "-E",
                    f"root_owner={uid}:{gid},nodiscard",
                    str(self.image),
                ]
            )
            if made.returncode != 0:
                raise SandboxError(f"mkfs.ext4 failed for {self.image}: {made.stderr.strip()}")
            mounted = _run(["mount", "-o", "loop,nosuid,nodev", str(self.image), str(self.mount)])
            if mounted.returncode != 0:
                raise SandboxError(f"mounting {self.image} failed: {mounted.stderr.strip()}")
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.mount / "lost+found")
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        """Unmount the image (lazily if still busy) and delete its directory; idempotent."""
        if os.path.ismount(self.mount) and _run(["umount", str(self.mount)]).returncode != 0:
            _run(["umount", "-l", str(self.mount)])
        if not os.path.ismount(self.mount):
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def read_owner(root: Path) -> dict[str, str]:
        """Read the ``owner.json`` of a disk directory (empty when missing or unreadable)."""
        try:
            data = json.loads((root / "owner.json").read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
