"""Which mount holds a path, from the kernel's mount table (mountinfo(5)): file storage asks for
its file system type (direct I/O on local disks only); the benchmark notes say where uploads went."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    point: str      # where it is mounted
    type: str       # ext4, xfs, nfs4, fuse.sshfs, ...
    source: str     # /dev/vda, server:/export, ...


def mount_of(path: str | os.PathLike[str], mountinfo: str = MOUNTINFO) -> Mount | None:
    """The mount with the longest mount point that contains path; None if the table is unreadable."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    target, found = os.path.realpath(path), None
    for line in lines:
        mount, separator, rest = line.partition(" - ")      # ... mount point ... - type source ...
        fields, tail = mount.split(" "), rest.split(" ")
        if not separator or len(fields) < 5 or len(tail) < 2:
            continue
        point = fields[4].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (found is None or len(point) > len(found.point)):
            found = Mount(point, tail[0], tail[1].replace("\\040", " "))
    return found
