"""The controller's memory of its volumes: one small JSON file per volume
under the plugin's `fs` root, `<volume id>.json` holding the CSI name and
the size. It makes a repeated CreateVolume tell a retry from a conflict,
lets ControllerGetVolume and ValidateVolumeCapabilities say what exists,
and lets ControllerExpandVolume grow what was made. The data itself is in
tmpfs on the node and needs no record."""

import json
import os


class Corrupt(ValueError):
    """A record that cannot be read as one."""


def _path(root, volume_id):
    return f"{root}/{volume_id}.json"


def read(root, volume_id):
    """The record ({"name", "capacity"}), or None when there is none."""
    try:
        with open(_path(root, volume_id)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
        if not isinstance(record.get("name"), str) or not isinstance(record.get("capacity"), int):
            raise ValueError("no name or capacity")
    except ValueError as e:
        raise Corrupt(f"record of {volume_id}: {e}")
    return record


def write(root, volume_id, name, capacity):
    """Whole or not at all: written beside, synced, renamed into place."""
    path = _path(root, volume_id)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"name": name, "capacity": capacity}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove(root, volume_id):
    """Gone is success."""
    try:
        os.remove(_path(root, volume_id))
    except FileNotFoundError:
        pass
