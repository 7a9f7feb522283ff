"""The control container's name, and the names of member blobs in it, checked.

Azure's rules for a container name: 3 to 63 characters, lowercase letters, digits and
hyphens, starting and ending with a letter or a digit, no two hyphens in a row
(https://learn.microsoft.com/rest/api/storageservices/naming-and-referencing-containers--blobs--and-metadata).
The control container is derived from the data container, `<data>-ctl`, unless
APP_AZURE_CONTROL_CONTAINER names one; a derived name too long for the rules keeps the start of
the data container's name and a hash of all of it, so two data containers never share one;
so does the name of `$root`, `$web` or `$logs` (`root-<hash>-ctl`: `root-ctl` is `root`'s).
"""

import hashlib
import re
import uuid

from nfs_watcher_uploader.coord.constants import CONTROL_SUFFIX, MEMBERS_PREFIX

CONTAINER_NAME_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(?:-[a-z0-9]+)*$")
CONTAINER_NAME_MAX = 63
_HASH_HEX = 8
SETTING = "APP_AZURE_CONTROL_CONTAINER"


def check_container_name(name: str, setting: str = SETTING) -> str:
    """`name` if Azure would take it as a container name; ValueError naming `setting` if not."""
    if not CONTAINER_NAME_RE.fullmatch(name):
        raise ValueError(
            f"{setting}={name!r} is not a valid container name: use 3 to 63 lowercase letters, "
            "digits and single hyphens, starting and ending with a letter or digit"
        )
    return name


def control_container_name(data_container: str, configured: str | None = None) -> str:
    """The control container: `configured` (APP_AZURE_CONTROL_CONTAINER) if set, else derived
    from `data_container`. Never the data container itself, whose consumers must not see
    control blobs. Raises ValueError naming the setting to change."""
    if configured:
        name = check_container_name(configured.strip())
        if name == data_container:
            raise ValueError(
                f"{SETTING} must name another container than APP_AZURE_CONTAINER: consumers of "
                "the data container would see the control blobs"
            )
        return name
    # `$root`, `$web` and `$logs` are data containers too; the `$` cannot be in ours.
    base = re.sub(r"-{2,}", "-", data_container.lstrip("$").lower()).strip("-")
    name = f"{base}{CONTROL_SUFFIX}"
    # A name that had to be changed (`$root` is `root` without its `$`) or cut carries a hash
    # of the whole name: `$root` and `root` never share one.
    if len(name) > CONTAINER_NAME_MAX or base != data_container:
        digest = hashlib.sha256(data_container.encode("utf-8", "surrogateescape")).hexdigest()
        keep = CONTAINER_NAME_MAX - len(CONTROL_SUFFIX) - _HASH_HEX - 1
        name = f"{base[:keep].rstrip('-')}-{digest[:_HASH_HEX]}{CONTROL_SUFFIX}"
    try:
        return check_container_name(name)
    except ValueError:
        raise ValueError(
            f"no valid control container name can be derived from APP_AZURE_CONTAINER="
            f"{data_container!r}: set {SETTING}"
        ) from None


def member_blob(incarnation: str) -> str:
    return f"{MEMBERS_PREFIX}{incarnation}"


def incarnation_of(blob_name: str) -> str | None:
    """The incarnation a member blob is named after; None for any other name (a blob that is
    not ours, or a name no member of ours would have)."""
    if not blob_name.startswith(MEMBERS_PREFIX):
        return None
    tail = blob_name[len(MEMBERS_PREFIX) :]
    return tail if is_incarnation(tail) else None


def is_incarnation(text: str) -> bool:
    """An incarnation is a UUID in its canonical lowercase form (it is also the lease id, and
    Azure takes only GUIDs as lease ids)."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def new_incarnation() -> str:
    return str(uuid.uuid4())
