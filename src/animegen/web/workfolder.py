"""The studio's work folder (`serve --work`): where it keeps each run's directions file and
the uploads it projects. What the studio writes there stays inside it (a symbolic link that
leads out is refused, never written or read through), the folder stays under a size limit
(the oldest uploads and their projections go first; directions files are never deleted), and
the commands the page shows name its files relative to where `serve` was started, never by
the server's absolute paths."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

from animegen.errors import UserError

WORK_LIMIT = 200 * 2**20  # bytes; `serve --work-limit` in MB
KEY = re.compile(r"^[0-9a-f]{16}$")  # an upload's random id: RUN/uploads/KEY.png and RUN/projections/KEY/


class WorkFolder:
    """One studio's work folder: links checked, size limited, paths shown relative."""

    def __init__(self, root: str | Path, limit: int = WORK_LIMIT):
        self.base = Path.cwd()  # where `serve` was started: the commands shown run from here
        self.root = Path(root).absolute()  # absolute, so no later change of directory moves it
        self.limit = limit

    def inside(self, path: str | Path) -> Path:
        """`path`, if it stays inside the work folder once every symbolic link on the way is
        followed; else a UserError. A work folder copied or checked out from elsewhere could hold
        a link to ~/.bashrc that saving a directions file would overwrite."""
        path = Path(path)
        try:
            inside = path.resolve().is_relative_to(self.root.resolve())
        except (OSError, RuntimeError):  # a loop of links
            inside = False
        if not inside:
            raise UserError(f"{self.shown(path)} leads out of the work folder (a symbolic link?); remove it.")
        return path

    def shown(self, path: str | Path) -> str:
        """`path` as the page shows it: relative to where `serve` was started, so the commands
        run as they are from there without telling the page where the server keeps its files."""
        return os.path.relpath(path, self.base)

    def make_room(self) -> set[str]:
        """Delete the oldest uploads, each with its projection, until the folder holds at most
        `limit` bytes; the keys deleted. A UserError when it is still over the limit without any
        upload. Symbolic links are measured and deleted as links, never followed."""
        total = _size(self.root)
        deleted = set()
        for key, paths in self._uploads():
            if total <= self.limit:
                break
            for path in paths:
                total -= _size(path)
                if _is_folder(path):
                    shutil.rmtree(path)  # which deletes links inside as links
                else:
                    path.unlink()
            deleted.add(key)
        if total > self.limit:
            raise UserError(f"the work folder holds {total / 2**20:.0f} MB besides uploads, over its limit of "
                            f"{self.limit / 2**20:.0f} MB (serve --work-limit).")
        return deleted

    def _uploads(self) -> list[tuple[str, list[Path]]]:
        """(key, its files) of every upload under a run's folder, oldest first."""
        found: dict[str, list[Path]] = {}
        for run in filter(_is_folder, _entries(self.root)):
            for kind in ("uploads", "projections"):
                for path in _entries(run / kind):
                    key = path.name.removesuffix(".png") if kind == "uploads" else path.name
                    if KEY.match(key):
                        found.setdefault(key, []).append(path)
        return sorted(found.items(), key=lambda item: min(p.lstat().st_mtime for p in item[1]))


def _is_folder(path: Path) -> bool:
    """A real folder: not a link to one."""
    return path.is_dir() and not path.is_symlink()


def _entries(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if _is_folder(folder) else []


def _size(path: Path) -> int:
    """Bytes of the regular files at or under `path`, links not followed."""
    if _is_folder(path):
        return sum(_file_size(os.path.join(folder, name)) for folder, _, names in os.walk(path) for name in names)
    return _file_size(path) if os.path.lexists(path) else 0


def _file_size(path: str | Path) -> int:
    """The bytes of a regular file; 0 for a link or anything else."""
    info = os.lstat(path)
    return info.st_size if stat.S_ISREG(info.st_mode) else 0
