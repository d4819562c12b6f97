"""tmpfs-py: scratch volumes as size-limited tmpfs mounts, in Python.

A wasmcsi plugin built with componentize-py against `wit/` (world
`plugin`); `make plugin-py` builds it. CreateVolume records the volume
under the plugin's `fs` root (records.py; the id is a hash of the name, the
rounded size also goes into the volume context for the CO to see),
NodeStageVolume mounts a tmpfs of the recorded size at the staging path through the host's `mount` capability, NodePublishVolume binds
it into the pod, and NodeExpandVolume grows it in place
(`mount.reconfigure` with a larger `size=`). The kernel enforces the size:
a write past it fails with ENOSPC.

The data is scratch: it lives in the node's memory (and swap) and is gone
at NodeUnstageVolume (or a node reboot). DeleteVolume removes the record.
A create repeated with the same name and a size range the volume fits is
the same volume; one whose range it does not fit is ALREADY_EXISTS.
"""

import functools
import hashlib
import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import controller, identity, node
from wit_world.imports import environment, fs_info, mount
from wit_world.imports import wasmcsi_plugin_types as types

import inline
import records
from sizes import MIB, Invalid, OutOfRange, Rules, parse_quantity

NAME = "tmpfs-py"
VERSION = "0.1.0"
ID = re.compile(r"^tmp-[0-9a-f]{32}$")
CAPACITY_KEY = "capacityBytes"
Code = types.ErrorCode


def fail(code, message):
    return Err(types.Error(code=code, message=message))


def answers(f):
    """Every exported call answers with a WIT error, never a trap: the
    size rules' refusals become their codes, a host error keeps its code
    with what was being done in front, and any other exception is INTERNAL
    naming it."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except OutOfRange as e:
            raise fail(Code.OUT_OF_RANGE, str(e))
        except Invalid as e:
            raise fail(Code.INVALID_ARGUMENT, str(e))
        except records.Corrupt as e:
            raise fail(Code.INTERNAL, str(e))
        except Err:
            raise
        except Exception as e:  # a bug: say which
            raise fail(Code.INTERNAL, f"{NAME} {f.__name__}: {type(e).__name__}: {e}")

    return wrapper


def host(what, call, *args):
    """A host capability call; its error says what was being done."""
    try:
        return call(*args)
    except Err as e:
        raise fail(e.value.code, f"{what}: {e.value.message}")


def rules():
    """Whole MiB, at least 1 MiB, 64 MiB when no size is asked, at most the
    `maxVolumeBytes` setting (a quantity, "2Gi")."""
    settings = dict(environment.settings())
    cap = settings.get("maxVolumeBytes")
    maximum = parse_quantity(cap) if cap else None
    if cap and maximum is None:
        raise fail(Code.FAILED_PRECONDITION, f"setting maxVolumeBytes {cap!r} is not a quantity")
    return Rules(maximum=maximum)


def check_id(volume_id):
    if not ID.match(volume_id):
        raise fail(Code.NOT_FOUND, f"volume {volume_id!r} was not made by {NAME}")


def state_root():
    """Where the volume records live: the `fs` root."""
    root = environment.root()
    if root is None:
        raise fail(
            Code.FAILED_PRECONDITION,
            f"{NAME} keeps its volume records under a root directory: grant capabilities.fs",
        )
    return root


def existing(volume_id):
    """The volume's record; NOT_FOUND when it has none."""
    check_id(volume_id)
    record = records.read(state_root(), volume_id)
    if record is None:
        raise fail(Code.NOT_FOUND, f"volume {volume_id} does not exist")
    return record


def volume(volume_id, capacity):
    return types.Volume(
        volume_id=volume_id,
        capacity_bytes=capacity,
        volume_context=[(CAPACITY_KEY, str(capacity))],
        content_source=None,
    )


def check_capability(cap):
    if isinstance(cap.access_type, types.AccessType_Block):
        raise fail(Code.INVALID_ARGUMENT, "tmpfs volumes are filesystems, not block devices")
    fs_type = cap.access_type.value.fs_type
    if fs_type not in ("", "tmpfs"):
        raise fail(Code.INVALID_ARGUMENT, f"fs_type {fs_type!r}: a tmpfs volume is tmpfs")


def publish_inline(req):
    """An inline volume (inline.py): a tmpfs of the pod's `size` (the same
    rules as CreateVolume: whole MiB, the default when unset, at most
    maxVolumeBytes) mounted at the target. Repeated, it is already there."""
    if not inline.is_inline_id(req.volume_id):
        raise fail(Code.INVALID_ARGUMENT, f"inline volume id {req.volume_id!r} is not kubelet's csi-<hex>")
    check_capability(req.capability)
    size = rules().for_create(inline.size_asked(req.volume_context), None)
    if host("looking at the target", mount.mounted_at, req.target_path) is not None:
        return
    host(f"mounting a {size}-byte tmpfs at {req.target_path}", mount.mount, req.volume_id,
         req.target_path, "tmpfs", inline.mount_options(size, req.capability, req.read_only))


class Identity(exports.Identity):
    def info(self) -> identity.PluginInfo:
        f = identity.Features
        return identity.PluginInfo(
            name=NAME,
            version=VERSION,
            features=f.STAGE | f.CONTROLLER_EXPAND | f.NODE_EXPAND | f.VOLUME_STATS,
            access_modes=[
                types.AccessMode.SINGLE_NODE_WRITER,
                types.AccessMode.SINGLE_NODE_SINGLE_WRITER,
                types.AccessMode.SINGLE_NODE_MULTI_WRITER,
            ],
            min_volume_bytes=MIB,
        )


def unimplemented(call):
    def answer(self, *args):
        raise fail(Code.UNIMPLEMENTED, f"{NAME} does not implement {call}")

    return answer


class Controller(exports.Controller):
    @answers
    def create_volume(self, req: controller.CreateVolumeRequest) -> types.Volume:
        for cap in req.capabilities:
            check_capability(cap)
        if req.content_source is not None:
            raise fail(Code.INVALID_ARGUMENT, "a tmpfs volume starts empty: no content source")
        if req.parameters:
            names = ", ".join(sorted(k for k, _ in req.parameters))
            raise fail(Code.INVALID_ARGUMENT, f"unknown parameters {names}: {NAME} takes none")
        root = state_root()
        volume_id = "tmp-" + hashlib.sha256(req.name.encode()).hexdigest()[:32]
        required, limit = req.capacity.required_bytes, req.capacity.limit_bytes
        record = records.read(root, volume_id)
        if record is not None:
            capacity = record["capacity"]
            if record["name"] != req.name:
                raise fail(Code.ALREADY_EXISTS, f"volume id {volume_id} is taken by {record['name']!r}")
            too_small = required is not None and capacity < required
            too_big = limit is not None and capacity > limit
            if too_small or too_big:
                raise fail(
                    Code.ALREADY_EXISTS,
                    f"volume {req.name!r} exists with {capacity} bytes, outside the range asked",
                )
            return volume(volume_id, capacity)
        size = rules().for_create(required, limit)
        records.write(root, volume_id, req.name, size)
        return volume(volume_id, size)

    @answers
    def delete_volume(self, volume_id: str, secrets) -> None:
        # The tmpfs went at unstage; the record goes now.
        if ID.match(volume_id):
            records.remove(state_root(), volume_id)

    @answers
    def get_volume(self, volume_id: str, secrets) -> types.Volume:
        return volume(volume_id, existing(volume_id)["capacity"])

    @answers
    def expand_volume(self, req: controller.ExpandRequest) -> controller.ExpandResult:
        record = existing(req.volume_id)
        size = rules().for_expand(
            record["capacity"], req.capacity.required_bytes, req.capacity.limit_bytes
        )
        if size != record["capacity"]:
            records.write(state_root(), req.volume_id, record["name"], size)
        return controller.ExpandResult(capacity_bytes=size, node_expansion_required=True)

    list_volumes = unimplemented("list-volumes")
    get_capacity = unimplemented("get-capacity")
    create_snapshot = unimplemented("create-snapshot")
    delete_snapshot = unimplemented("delete-snapshot")
    list_snapshots = unimplemented("list-snapshots")
    create_group_snapshot = unimplemented("create-group-snapshot")
    delete_group_snapshot = unimplemented("delete-group-snapshot")
    get_group_snapshot = unimplemented("get-group-snapshot")


class Node(exports.Node):
    @answers
    def stage_volume(self, req: node.StageRequest) -> None:
        check_capability(req.capability)
        # The size is the plugin's own record, never the volume context a
        # CO passes back: a context can be edited, a record cannot.
        size = existing(req.volume_id)["capacity"]
        maximum = rules().max
        if maximum is not None and size > maximum:
            raise fail(
                Code.OUT_OF_RANGE,
                f"volume {req.volume_id} has {size} bytes, above maxVolumeBytes {maximum}",
            )
        options = [f"size={size}"] + list(req.capability.access_type.value.mount_flags)
        host(f"mounting a tmpfs at {req.staging_path}", mount.mount,
             req.volume_id, req.staging_path, "tmpfs", options)

    @answers
    def unstage_volume(self, volume_id: str, staging_path: str) -> None:
        check_id(volume_id)
        host(f"unmounting {staging_path}", mount.unmount, staging_path, True)

    @answers
    def publish_volume(self, req: node.PublishRequest) -> None:
        if inline.is_inline(req.volume_context):
            return publish_inline(req)
        check_id(req.volume_id)
        check_capability(req.capability)
        if not req.staging_path:
            raise fail(Code.FAILED_PRECONDITION, "publish needs the staging path")
        if host("looking at the staging path", mount.mounted_at, req.staging_path) is None:
            raise fail(Code.FAILED_PRECONDITION, f"volume {req.volume_id} is not staged")
        host(f"binding {req.staging_path} onto {req.target_path}", mount.bind,
             req.staging_path, req.target_path, req.read_only)

    @answers
    def unpublish_volume(self, volume_id: str, target_path: str) -> None:
        # An inline volume is its mount: unmounting it is deleting it.
        if not inline.is_inline_id(volume_id):
            check_id(volume_id)
        host(f"unmounting {target_path}", mount.unmount, target_path, True)

    @answers
    def expand_volume(self, req: node.ExpandRequest) -> int:
        recorded = existing(req.volume_id)["capacity"]
        path = req.staging_path or req.volume_path
        if host(f"looking at {path}", mount.mounted_at, path) is None:
            raise fail(Code.NOT_FOUND, f"volume {req.volume_id} is not mounted at {path}")
        current = host(f"statfs {path}", fs_info.statfs, path).total_bytes
        size = rules().for_expand(current, req.capacity.required_bytes, req.capacity.limit_bytes)
        if size > recorded:
            # ControllerExpandVolume records a grow (checked against
            # maxVolumeBytes) before the node makes it.
            raise fail(
                Code.OUT_OF_RANGE,
                f"volume {req.volume_id} has {recorded} bytes: expand it with "
                f"ControllerExpandVolume before growing it to {size}",
            )
        if size != current:
            host(f"resizing the tmpfs at {path}", mount.reconfigure, path, [f"size={size}"])
        return size

    @answers
    def get_volume_stats(self, volume_id: str, volume_path: str, staging_path) -> node.VolumeStats:
        if not inline.is_inline_id(volume_id):
            existing(volume_id)
        st = host(f"statfs {volume_path}", fs_info.statfs, volume_path)
        return node.VolumeStats(
            total_bytes=st.total_bytes,
            available_bytes=st.available_bytes,
            used_bytes=st.total_bytes - st.free_bytes,
            total_inodes=st.total_inodes,
            available_inodes=st.free_inodes,
            used_inodes=st.total_inodes - st.free_inodes,
            healthy=True,
            message="",
        )
