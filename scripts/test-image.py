#!/usr/bin/env python3
"""Checks a driver image archive made by scripts/image.sh, without a
container engine: it unpacks the archive with umoci and runs the image's own
programs in its root filesystem (chroot, in fresh mount and pid namespaces
with their own /proc).

    scripts/test-image.py ARCHIVE [--deploy-out DIR]
    scripts/test-image.py --host-tools      the programs the host may exec, and where

1. The image is the Dockerfile's: ENTRYPOINT, CMD, LABELs and PATH as the
   Dockerfile gives them (scripts/dockerfile-config.py), the files it copies
   in place, every package of deploy/image/packages installed; and it is lean:
   no apt lists, no docs but licences, no man pages, no compiler.
2. Every program the host may exec is on the image's PATH and runs (its
   shared libraries and interpreter load). The list is derived from the
   source, not kept by hand: each `command::run*("prog", ...)` and
   `Command::new("prog")` in host/src outside tests, bin/ and testkit.rs,
   plus mount(8)'s helper `mount.TYPE` for each type of NETWORK_TYPES in
   capabilities/mount.rs (mount(8) execs it). A call whose program is not a
   string literal fails the test, since it cannot be checked.
   The filesystem tools then run as the host runs them, on image files
   through /proc/self/fd/3: mkfs.xfs, blkid, xfs_admin -U generate,
   mkfs.ext4, e2fsck, resize2fs, tune2fs.
3. `wasmcsi version`, and `wasmcsi validate-config` on every config embedded
   in deploy/ (extracted by deploy/check.sh), at the path the container's
   --config names and under that container's environment; with
   --load-plugins (compile and load each plugin from the image) when every
   plugin it names is in the image.

Exit status 0 when every check passed; the last line is the summary.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

passed = 0
failed = []


def ok(what):
    global passed
    passed += 1
    print(f"ok   {what}")


def fail(what):
    failed.append(what)
    print(f"FAIL {what}")


# --- the programs the host may exec, from the source -------------------------

CALL = re.compile(r'(?:command::run\w*|Command::new)\(\s*("([^"]*)"|[^)\s]+)')
TEST_MODULE = re.compile(r'^#\[cfg\(test\)\]\s*\n\s*mod \w+', re.M)


def host_tools():
    """{program: [where it is run]}; raises ValueError on what it cannot read."""
    src = os.path.join(ROOT, "host", "src")
    tools, problems = {}, []
    for dirpath, dirnames, filenames in os.walk(src):
        # The demo, the benchmark and the test kit are in host/testkit,
        # outside host/src: not in the image.
        for fn in sorted(filenames):
            if not fn.endswith(".rs"):
                continue
            path = os.path.join(dirpath, fn)
            with open(path) as f:
                text = f.read()
            m = TEST_MODULE.search(text)
            if m:
                text = text[:m.start()]
            rel = os.path.relpath(path, ROOT)
            for c in CALL.finditer(text):
                line = text.count("\n", 0, c.start()) + 1
                if c.group(2) is not None:
                    tools.setdefault(c.group(2), []).append(f"{rel}:{line}")
                elif not (rel.endswith("sys/command.rs") and c.group(1) == "program"):
                    problems.append(f"{rel}:{line}: program {c.group(1)!r} is not a literal")
    with open(os.path.join(src, "capabilities", "mount.rs")) as f:
        m = re.search(r'const NETWORK_TYPES: &\[&str\] = &\[([^\]]*)\]', f.read())
    if not m:
        problems.append("host/src/capabilities/mount.rs: no NETWORK_TYPES list")
    elif "mount" in tools:
        for t in re.findall(r'"([^"]+)"', m.group(1)):
            tools.setdefault(f"mount.{t}", []).append(
                f"host/src/capabilities/mount.rs NETWORK_TYPES ({t}, through mount(8))")
    if problems:
        raise ValueError("; ".join(problems))
    if len(tools) < 5:
        raise ValueError(f"only {sorted(tools)} found: has the tool runner changed?")
    return tools


# --- running inside the image -------------------------------------------------

class Image:
    def __init__(self, rootfs, env):
        self.rootfs = rootfs
        self.env = env

    def run(self, argv, env=None, timeout=300):
        """argv inside the image: chroot in new mount+pid namespaces, /proc mounted."""
        full_env = dict(self.env)
        full_env.update(env or {})
        cmd = ["unshare", "--mount", "--pid", "--fork",
               f"--mount-proc={os.path.join(self.rootfs, 'proc')}",
               "chroot", self.rootfs, "/usr/bin/env", "-i"]
        cmd += [f"{k}={v}" for k, v in full_env.items()] + list(argv)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def path(self, p):
        return os.path.join(self.rootfs, p.lstrip("/"))


def said(r):
    return (r.stderr.strip() or r.stdout.strip())[-600:]


def check_config(image, layout, expected):
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    if len(index["manifests"]) != 1:
        fail(f"archive: {len(index['manifests'])} manifests, want 1")
    desc = index["manifests"][0]

    def blob(d):
        with open(os.path.join(layout, "blobs", *d["digest"].split(":"))) as f:
            return json.load(f)

    manifest = blob(desc)
    config = blob(manifest["config"])["config"]
    ok(f"archive: image {desc['annotations'].get('org.opencontainers.image.ref.name')}, "
       f"{len(manifest['layers'])} layer(s), "
       f"{sum(layer['size'] for layer in manifest['layers']) / 1048576:.1f} MiB compressed")
    for key in ("Entrypoint", "Cmd"):
        if config.get(key) != expected[key]:
            fail(f"config {key} {config.get(key)} is not the Dockerfile's {expected[key]}")
        else:
            ok(f"config {key} {config.get(key)}: the Dockerfile's")
    if (config.get("Labels") or {}) != expected["Labels"]:
        fail(f"config labels {config.get('Labels')} are not the Dockerfile's {expected['Labels']}")
    else:
        ok(f"config labels: the Dockerfile's {len(expected['Labels'])}")
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        dockerfile = f.read()
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = f.read().split()
    for shared in ("deploy/image/packages", "deploy/image/dpkg-excludes"):
        if f"COPY {shared} " not in dockerfile:
            fail(f"the Dockerfile does not read {shared}: the two builds may differ")
        elif "deploy" in ignored and "!deploy/image" not in ignored:
            fail(f".dockerignore leaves {shared} out of Docker's build context")
        else:
            ok(f"the Dockerfile reads {shared} too")
    env = dict(e.split("=", 1) for e in config.get("Env") or [])
    for key, value in expected["Env"].items():
        if env.get(key) != value:
            fail(f"config env {key}={env.get(key)!r}, want {value!r}")
    ok(f"config env {sorted(env)}")
    return env


def check_contents(image, expected):
    for dest in expected["Files"]:
        if not os.path.isfile(image.path(dest)):
            fail(f"file {dest} (the Dockerfile copies it) is not in the image")
        else:
            ok(f"file {dest}: {os.path.getsize(image.path(dest)) / 1048576:.1f} MiB")
    for d in expected["Dirs"]:
        if not os.path.isdir(image.path(d)):
            fail(f"directory {d} (the Dockerfile makes it) is not in the image")
        else:
            ok(f"directory {d}")
    with open(os.path.join(ROOT, "deploy", "image", "packages")) as f:
        wanted = [w for line in f for w in line.split("#", 1)[0].split()]
    r = image.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n"])
    installed = {line.split()[0] for line in r.stdout.splitlines() if line.endswith(" installed")}
    missing = [p for p in wanted if p not in installed]
    if r.returncode != 0 or missing:
        fail(f"packages of deploy/image/packages not installed: {missing} {said(r) if r.returncode else ''}")
    else:
        ok(f"packages: all {len(wanted)} of deploy/image/packages installed ({len(installed)} in all)")
    lean = []
    # apt's lock and empty partial/ stay: no package lists.
    for dirpath, _, files in os.walk(image.path("/var/lib/apt/lists")):
        if [f for f in files if f != "lock"]:
            lean.append(f"apt lists in {os.path.relpath(dirpath, image.rootfs)}")
            break
    # Regular files only: dangling links to excluded docs weigh nothing, and
    # info/dir is base-files' own index.
    keep = {"/usr/share/doc": "copyright", "/usr/share/info": "dir", "/usr/share/man": None}
    for top, kept in keep.items():
        for dirpath, _, files in os.walk(image.path(top)):
            extra = [f for f in files if f != kept
                     and not os.path.islink(os.path.join(dirpath, f))]
            if extra:
                lean.append(f"{os.path.relpath(os.path.join(dirpath, extra[0]), image.rootfs)} (and maybe more)")
                break
    for compiler in ("cc", "gcc", "c++", "rustc", "cargo", "ld", "as", "make"):
        r = image.run(["/bin/sh", "-c", 'command -v "$1"', "sh", compiler])
        if r.returncode == 0:
            lean.append(f"a compiler or build tool: {r.stdout.strip()}")
    if lean:
        fail(f"the image is not lean: {'; '.join(lean)}")
    else:
        ok("lean: no apt lists, no docs but copyright files, no man or info pages, no compiler")


def check_tools(image):
    try:
        tools = host_tools()
    except ValueError as e:
        fail(f"the programs the host may exec cannot be derived from host/src: {e}")
        return
    for tool, where in sorted(tools.items()):
        r = image.run(["/bin/sh", "-c", 'command -v "$1"', "sh", tool])
        if r.returncode != 0:
            fail(f"tool {tool} (run at {where[0]}) is not on the image's PATH")
            continue
        at = r.stdout.strip()
        # It starts: its loader, libraries and interpreter are there.
        r = image.run([tool, "--version"], timeout=60)
        out = r.stdout + r.stderr
        if r.returncode in (126, 127) or "error while loading shared libraries" in out:
            fail(f"tool {tool} ({at}) does not start: {said(r)}")
        else:
            ok(f"tool {tool}: {at} (run at {', '.join(where)})")

    # As the host runs them: on an image file through /proc/self/fd/3.
    script = r"""
set -eu
fd=/proc/self/fd/3
cd /tmp
truncate -s 300M xfs.img
mkfs.xfs -q $fd 3<>xfs.img
test "$(blkid -p -o value -s TYPE $fd 3<xfs.img)" = xfs
xfs_admin -U generate $fd 3<>xfs.img 2>err; ! grep ERROR err
truncate -s 32M ext4.img
mkfs.ext4 -q -F -m 0 $fd 3<>ext4.img
test "$(blkid -p -o value -s TYPE $fd 3<ext4.img)" = ext4
e2fsck -f -p $fd 3<>ext4.img
truncate -s 64M ext4.img
resize2fs $fd 3<>ext4.img 2>/dev/null
tune2fs -U random $fd 3<>ext4.img >/dev/null
e2fsck -f -n $fd 3<ext4.img >/dev/null
rm -f xfs.img ext4.img err
"""
    r = image.run(["/bin/sh", "-c", script], timeout=300)
    if r.returncode != 0:
        fail(f"filesystem tools on an image file, as the host runs them: {said(r)}")
    else:
        ok("filesystem tools on image files as the host runs them: mkfs.xfs, blkid, "
           "xfs_admin -U generate, mkfs.ext4, e2fsck, resize2fs, tune2fs")


def check_driver(image, deploy_out):
    r = image.run(["/usr/local/bin/wasmcsi", "version"])
    if r.returncode != 0 or not r.stdout.startswith("wasmcsi "):
        fail(f"wasmcsi version: {said(r)}")
    else:
        ok(f"wasmcsi version: {r.stdout.strip()}")

    check = subprocess.run([os.path.join(ROOT, "deploy", "check.sh"), deploy_out],
                           capture_output=True, text=True)
    if check.returncode != 0:
        fail(f"deploy/check.sh could not extract the configs: {check.stdout[-1500:]}{check.stderr[-600:]}")
        return
    with open(os.path.join(deploy_out, "wasmcsi-containers.json")) as f:
        containers = json.load(f)["containers"]
    import yaml  # deploy/check.sh needs it too
    configs = set()
    for c in containers:
        where = f"{c['overlay']} {c['kind']}/{c['name']}"
        if not c["config"]:
            fail(f"{where}: no config extracted")
            continue
        configs.add(c["config"])
        cfg_path = next((a.split("=", 1)[1] for a in c["args"] if a.startswith("--config=")), None)
        if not cfg_path:
            fail(f"{where}: no --config=FILE in {c['args']}")
            continue
        os.makedirs(os.path.dirname(image.path(cfg_path)), exist_ok=True)
        shutil.copyfile(os.path.join(deploy_out, c["config"]), image.path(cfg_path))
        with open(image.path(cfg_path)) as f:
            plugin_paths = [p.get("path", "") for p in (yaml.safe_load(f) or {}).get("plugins", [])]
        absent = [p for p in plugin_paths if not os.path.isfile(image.path(p))]
        env = {k: v for k, v in c["env"].items() if v is not None}
        argv = ["/usr/local/bin/wasmcsi", "validate-config", "--config", cfg_path]
        if not absent:
            argv.append("--load-plugins")
        r = image.run(argv, env=env)
        if r.returncode != 0:
            fail(f"{where}: `{' '.join(argv[1:])}` in the image: {said(r)}")
        else:
            how = "plugins compiled and loaded" if not absent else \
                f"not loaded: {', '.join(absent)} is mounted at deploy time"
            ok(f"{where}: validate-config {c['config']} at {cfg_path} ({how})")
    if not configs:
        fail("no config found in deploy/")


def main():
    args = sys.argv[1:]
    if args == ["--host-tools"]:
        for tool, where in sorted(host_tools().items()):
            print(f"{tool}\t{', '.join(where)}")
        return 0
    deploy_out = None
    if len(args) == 3 and args[1] == "--deploy-out":
        deploy_out = args[2]
        args = args[:1]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    archive = os.path.abspath(args[0])
    if os.getuid() != 0:
        print("test-image: run as root (chroot, namespaces)", file=sys.stderr)
        return 2
    for tool in ("umoci", "unshare", "chroot"):
        if not shutil.which(tool):
            print(f"test-image: {tool} not found (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    expected = json.loads(subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "dockerfile-config.py"), "--json",
         os.path.join(ROOT, "Dockerfile")], check=True, capture_output=True, text=True).stdout)

    work = tempfile.mkdtemp(prefix="test-image.", dir=os.path.join(ROOT, "target"))
    try:
        layout, bundle = os.path.join(work, "layout"), os.path.join(work, "bundle")
        os.makedirs(layout)
        subprocess.run(["tar", "-xf", archive, "-C", layout], check=True)
        with open(os.path.join(layout, "index.json")) as f:
            ref = json.load(f)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:{ref}", bundle], check=True,
                       capture_output=True)
        image = Image(os.path.join(bundle, "rootfs"), {})
        image.env = check_config(image, layout, expected)
        check_contents(image, expected)
        check_tools(image)
        check_driver(image, deploy_out or os.path.join(work, "deploy"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    if failed:
        print(f"test-image: FAILED: {len(failed)} of {passed + len(failed)} checks of {archive}")
        return 1
    print(f"test-image: OK: {passed} checks of {archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
