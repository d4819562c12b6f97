#!/usr/bin/env python3
"""What the Dockerfile's final stage puts in the driver image, for the builds
and checks that do without Docker (scripts/image.sh, scripts/test-image.sh).

    dockerfile-config.py --buildah-args Dockerfile   `buildah config` options, NUL-separated
    dockerfile-config.py --json Dockerfile           the same as JSON, plus the files

Reads ENTRYPOINT and CMD (exec form), LABEL, ENV, `COPY --from=build SRC...
DEST` and `RUN mkdir -p DIR...` of the last stage. The stage's base image
(debian:SUITE-slim) sets PATH; so does this image, the same way.
"""
import json
import shlex
import sys

# PATH of Debian's official images (debian:*-slim), which the final stage
# inherits: the host finds mkfs.xfs & co. through it.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def instructions(path):
    """(INSTRUCTION, rest) of each line, continuations joined, comments dropped."""
    out, cur = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.rstrip().endswith("\\"):
                cur += line.rstrip()[:-1] + " "
                continue
            cur += line
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def final_stage(path):
    stage = []
    for word, rest in instructions(path):
        if word == "FROM":
            stage = []
        else:
            stage.append((word, rest))
    return stage


def parse(path):
    cfg = {"Entrypoint": None, "Cmd": None, "Labels": {}, "Env": dict(BASE_ENV),
           "Files": {}, "Dirs": []}
    for word, rest in final_stage(path):
        if word in ("ENTRYPOINT", "CMD"):
            value = json.loads(rest)  # exec form only: a shell form would need /bin/sh -c
            if not isinstance(value, list):
                raise SystemExit(f"{path}: {word} is not in exec form")
            cfg[word.capitalize()] = value
        elif word in ("LABEL", "ENV"):
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                if not sep:
                    raise SystemExit(f"{path}: {word} {pair!r}: want KEY=VALUE")
                cfg["Labels" if word == "LABEL" else "Env"][key] = value
        elif word == "COPY" and rest.startswith("--from=build "):
            parts = shlex.split(rest)[1:]
            *sources, dest = parts
            for src in sources:
                name = src.rsplit("/", 1)[-1]
                target = dest + name if dest.endswith("/") else dest
                cfg["Files"][target] = name
        elif word == "RUN" and rest.startswith("mkdir -p "):
            cfg["Dirs"].extend(shlex.split(rest)[2:])
    return cfg


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("--buildah-args", "--json"):
        raise SystemExit(__doc__)
    cfg = parse(sys.argv[2])
    if sys.argv[1] == "--json":
        json.dump(cfg, sys.stdout, indent=2, sort_keys=True)
        print()
        return
    args = ["--entrypoint", json.dumps(cfg["Entrypoint"]), "--cmd", json.dumps(cfg["Cmd"])]
    for key, value in cfg["Labels"].items():
        args += ["--label", f"{key}={value}"]
    for key, value in cfg["Env"].items():
        args += ["--env", f"{key}={value}"]
    sys.stdout.write("".join(a + "\0" for a in args))


if __name__ == "__main__":
    main()
