"""Which files below a session folder are uploaded: the ones users mean.

Patterns are shell globs (`*`, `?`, `[...]`, case-sensitive), matched on the path relative to
the session folder:

- a pattern without `/` matches a name: for APP_EXCLUDE, the file's name or the name of any
  folder on its path (`.*` excludes `.cache/x.bin` and `cam1/.x.bin`); for APP_INCLUDE, the
  file's name;
- a pattern with `/` matches the whole relative path, and there `*` matches `/` too
  (`cam1/*` is everything below cam1).

A file is uploaded when it matches no exclude pattern and, if APP_INCLUDE or
APP_FILE_EXTENSIONS is set, an include pattern or one of the extensions. Exclude wins.
DEFAULT_EXCLUDES are what recorders and tools write while they work; they apply unless
APP_EXCLUDE_DEFAULTS=false. An excluded file is never claimed: it stays in incoming, is counted
as `excluded`, and does not keep a session from `drained`.
"""

import fnmatch
import os
import re
from collections.abc import Iterable

from nfs_watcher_uploader.config import Settings

# Dotfiles (rsync's `.name.XXXXXX`, `.~lock` files), temporary and partial downloads, editor
# backups and swap files: files that are still being written, or never meant to be kept.
DEFAULT_EXCLUDES = (".*", "*.tmp", "*.part", "*.partial", "*~", "*.swp", "*.crdownload")


def _compile(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regular expression for all `patterns` (None for none): one match per name."""
    parts = [f"(?:{fnmatch.translate(p)})" for p in patterns]
    return re.compile("|".join(parts)) if parts else None


def _matches(pattern: re.Pattern[str] | None, text: str) -> bool:
    return pattern is not None and pattern.match(text) is not None


class FileFilter:
    """Decides, per path, whether a file is one to upload."""

    def __init__(
        self,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        extensions: frozenset[str] = frozenset(),
        defaults: bool = True,
    ) -> None:
        excludes = [*(DEFAULT_EXCLUDES if defaults else ()), *exclude]
        includes = list(include)
        self.describe = f"include={includes} exclude={excludes} extensions={sorted(extensions)}"
        self._exclude_name = _compile(p for p in excludes if "/" not in p)
        self._exclude_path = _compile(p for p in excludes if "/" in p)
        self._include_name = _compile(p for p in includes if "/" not in p)
        self._include_path = _compile(p for p in includes if "/" in p)
        self._extensions = extensions
        self._selective = bool(includes or extensions)

    @classmethod
    def from_settings(cls, settings: Settings) -> "FileFilter":
        return cls(
            settings.include,
            settings.exclude,
            settings.file_extensions,
            settings.exclude_defaults,
        )

    def __repr__(self) -> str:
        return f"FileFilter({self.describe})"

    def folder_excluded(self, name: str) -> bool:
        """A folder of this name, and everything below it, is excluded."""
        return _matches(self._exclude_name, name)

    def wanted(self, rel: str, name: str) -> bool:
        """Whether the file `rel` (whose own name is `name`, in folders not excluded) goes up."""
        if _matches(self._exclude_name, name) or _matches(self._exclude_path, rel):
            return False
        if not self._selective:
            return True
        if os.path.splitext(name)[1].lower() in self._extensions:
            return True
        return _matches(self._include_name, name) or _matches(self._include_path, rel)
