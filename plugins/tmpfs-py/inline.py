"""CSI inline ephemeral volumes: a tmpfs declared in the pod spec
(`csi: {driver: ..., volumeAttributes: {size: 256Mi}}`) that lives and dies
with the pod. kubelet neither creates nor stages it: NodePublishVolume, with
`csi.storage.k8s.io/ephemeral: "true"` in the volume context and a volume id
of kubelet's own (`csi-<hex>`), mounts a tmpfs of that size at the target;
NodeUnpublishVolume unmounts it, and the data goes with the mount.

Nothing is recorded: the mount is the volume. A driver that dies between
publish and unpublish leaves only the mount, which kubelet's unpublish (it
retries until it succeeds, also after a node restart, when the tmpfs is gone
anyway) takes down. The host sends inline volumes here only when this
plugin's config says `inlineVolumes: true`."""

import re

from sizes import Invalid, parse_quantity

EPHEMERAL = "csi.storage.k8s.io/ephemeral"
SIZE = "size"
# Attributes the pod may give; anything else is a typo worth refusing.
KNOWN = {EPHEMERAL, SIZE, "plugin"}
ID = re.compile(r"^csi-[0-9a-f]{1,128}$")


def is_inline(volume_context):
    return dict(volume_context).get(EPHEMERAL) == "true"


def is_inline_id(volume_id):
    return bool(ID.match(volume_id))


def size_asked(volume_context):
    """The `size` attribute in bytes, or None (the default size). Keys
    kubelet adds for podInfoOnMount (csi.storage.k8s.io/*) pass."""
    attrs = dict(volume_context)
    unknown = sorted(k for k in attrs if k not in KNOWN and not k.startswith("csi.storage.k8s.io/"))
    if unknown:
        raise Invalid(f"unknown volume attributes {unknown} (an inline tmpfs takes: size)")
    text = attrs.get(SIZE)
    if text is None:
        return None
    size = parse_quantity(text)
    if not size:
        raise Invalid(f"volume attribute size={text!r} is not a quantity such as 256Mi")
    return size


def mount_options(size, capability, read_only):
    options = [f"size={size}"] + list(capability.access_type.value.mount_flags)
    if read_only:
        options.append("ro")
    return options
