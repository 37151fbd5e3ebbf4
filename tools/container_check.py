#!/usr/bin/env python3
"""Check the Apptainer definition and the Dockerfile without a container runtime.

Extracts the ``python -m pip install`` steps of ``%post`` and the commands of ``%test`` from the
``Singularity`` file and runs them in a fresh virtual environment, with ``/opt/l2s-pipelines``
replaced by this checkout and the variables of ``%environment`` set. Build steps that need the
network (TemplateFlow downloads) are skipped; lines that read templates run only when
``--templateflow-home`` points at a pre-fetched TemplateFlow folder.

With ``--definition Dockerfile`` the Dockerfile is read into the same sections (``FROM`` ->
header, ``LABEL`` -> labels, ``COPY`` -> files, ``RUN`` -> post, ``ENV`` -> environment,
``ENTRYPOINT`` -> runscript, the ``RUN`` after a ``# container_check: test`` comment -> test),
first compared with the ``Singularity`` definition beside it (same base image, pip steps,
``python -c`` build steps, environment, entry point, self-test and version; a difference fails
before anything is installed), then run the same way.

Usage (CI; CPU-only torch through the constraints file):
    python tools/container_check.py --venv /tmp/l2s-container-venv --constraints constraints-cpu.txt
    python tools/container_check.py --definition Dockerfile --venv /tmp/l2s-docker-venv \
        --constraints constraints-cpu.txt
Exit status: 0 when every step ran and succeeded, 1 otherwise (the failing step is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGE_SOURCE = "/opt/l2s-pipelines"
_PIP = re.compile(r"^python3? -m pip install (.+)$")


def read_sections(definition: Path) -> dict[str, list[str]]:
    """``{section: [lines]}`` of an Apptainer definition (``header`` for the lines before the
    first ``%section``); comments and blank lines dropped, ``\\`` continuations joined."""
    sections: dict[str, list[str]] = {"header": []}
    current = "header"
    pending = ""
    for raw in definition.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("%") and not pending:
            current = stripped[1:].split()[0]
            sections.setdefault(current, [])
            continue
        if not stripped or stripped.startswith("#"):
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        sections[current].append(line)
    return sections


def environment(lines: list[str], *, resolve: bool = True) -> dict[str, str]:
    """Variables of ``%environment`` (``export NAME=value``; ``${X:-d}`` gives d unless X set,
    or always d with ``resolve=False``)."""
    env = {}
    for line in lines:
        m = re.match(r"^export (\w+)=(.*)$", line)
        if not m:
            continue
        name, value = m.group(1), shlex.split(m.group(2))[0] if m.group(2) else ""
        default = re.fullmatch(r"\$\{(\w+):-(.*)\}", value)
        if default:
            value = os.environ.get(default.group(1), default.group(2)) if resolve else default.group(2)
        env[name] = value
    return env


_TEST_MARK = "# container_check: test"


def is_dockerfile(definition: Path) -> bool:
    """Whether ``definition`` is a Dockerfile (its first instruction is ``FROM`` or ``ARG``)."""
    for raw in definition.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            return line.split()[0].upper() in ("FROM", "ARG")
    return False


def docker_instructions(dockerfile: Path) -> list[tuple[str, str, bool]]:
    """``[(INSTRUCTION, arguments, is_test)]`` of a Dockerfile, ``\\`` continuations joined,
    comments dropped; ``is_test`` marks the ``RUN`` that follows a ``# container_check: test``
    comment."""
    out, pending, marked = [], "", False
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if not pending and stripped.startswith("#"):
            marked = marked or stripped.startswith(_TEST_MARK)
            continue
        if not stripped:
            continue
        line = pending + stripped
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        word, _, args = line.partition(" ")
        out.append((word.upper(), args.strip(), marked and word.upper() == "RUN"))
        marked = marked and word.upper() != "RUN"
    return out


def split_commands(body: str) -> list[str]:
    """Split a one-line shell script on the ``;`` that separate its commands (not those inside
    quotes or ``{ ...; }`` groups), so each command is a line as in ``%test``."""
    parts, current, quote, depth = [], "", None, 0
    for char in body:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == ";" and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    return [p for p in (*parts, current.strip()) if p]


def docker_sections(dockerfile: Path) -> dict[str, list[str]]:
    """A Dockerfile in the sections of an Apptainer definition (see the module docstring)."""
    sections: dict[str, list[str]] = {k: [] for k in ("header", "labels", "files", "post", "environment",
                                                      "runscript", "test")}
    for word, args, is_test in docker_instructions(dockerfile):
        if word == "FROM":
            sections["header"].append(f"From: {args}")
        elif word == "LABEL":
            sections["labels"] += [" ".join(item.split("=", 1)) for item in shlex.split(args)]
        elif word == "COPY":
            sections["files"].append(args)
        elif word == "RUN":
            if is_test:
                sections["test"] += split_commands(args)
            else:
                sections["post"].append(args)
        elif word == "ENV":
            items = shlex.split(args)
            pairs = [i.split("=", 1) for i in items] if "=" in items[0] else [[items[0], " ".join(items[1:])]]
            sections["environment"] += [f"export {k}={shlex.quote(v)}" for k, v in pairs]
        elif word in ("ENTRYPOINT", "CMD"):
            cmd = json.loads(args) if args.startswith("[") else shlex.split(args)
            sections["runscript"] = [f'exec {shlex.join(cmd)} "$@"']
    return sections


def compare_definitions(docker: dict, singularity: dict) -> list[str]:
    """Differences between a Dockerfile's sections and the Apptainer definition's that matter:
    base image, pip steps, ``python -c`` build steps, environment (Docker ``ENV`` = the
    ``%environment`` defaults plus the variables ``%post`` exports), entry point, self-test
    commands and ``Version`` label. Empty when they agree."""
    problems = []
    if docker["header"][-1:] != [h for h in singularity["header"] if h.startswith("From:")][-1:]:
        problems.append(f"base image: {docker['header']} vs {singularity['header']}")
    if pip_steps(docker["post"]) != pip_steps(singularity["post"]):
        problems.append(f"pip steps: {pip_steps(docker['post'])} vs {pip_steps(singularity['post'])}")
    inline = [[line for line in s["post"] if line.startswith("python -c")] for s in (docker, singularity)]
    if inline[0] != inline[1]:
        problems.append(f"python -c build steps differ: {inline[0]} vs {inline[1]}")
    want = environment(singularity["environment"], resolve=False)
    exported = {}
    for line in singularity["post"]:
        if line.startswith("export "):
            exported.update(kv.split("=", 1) for kv in shlex.split(line[7:]) if "=" in kv)
    have = environment(docker["environment"], resolve=False)
    for name in sorted(set(want) | set(have)):
        if name in want and have.get(name) != want[name]:
            problems.append(f"environment {name}: {have.get(name)!r} in the Dockerfile, {want[name]!r} in %environment")
        elif name not in want and exported.get(name) != have[name]:
            problems.append(f"environment {name}={have[name]!r} is set by the Dockerfile only")
    if docker["runscript"] != singularity["runscript"]:
        problems.append(f"entry point: {docker['runscript']} vs %runscript {singularity['runscript']}")
    if docker["test"] != singularity["test"]:
        problems.append(f"self-test: {docker['test']} vs %test {singularity['test']}")
    version = [[lab for lab in s["labels"] if lab.startswith("Version ")] for s in (docker, singularity)]
    if version[0] != version[1]:
        problems.append(f"Version label: {version[0]} vs {version[1]}")
    return problems


def pip_steps(post: list[str]) -> list[list[str]]:
    """Argument lists of the ``python -m pip install`` lines of ``%post`` (pip upgrades kept)."""
    steps = []
    for line in post:
        m = _PIP.match(line)
        if m:
            args = [a.replace(IMAGE_SOURCE, str(REPO)) for a in shlex.split(m.group(1))]
            steps.append(args)
    return steps


def needs_templates(line: str) -> bool:
    """Whether a command reads TemplateFlow files (or fetches them)."""
    return "templateflow" in line.lower() or "get_template_files" in line


def _run(cmd: str | list[str], env: dict, shell: bool = False) -> None:
    shown = cmd if shell else shlex.join(cmd)
    print(f"+ {shown}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, shell=shell, executable="/bin/bash" if shell else None)
    print(f"  ({time.monotonic() - t0:.1f} s, exit {proc.returncode})", flush=True)
    if proc.returncode:
        raise SystemExit(f"container_check: step failed: {shown}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--definition", type=Path, default=REPO / "Singularity",
                   help="Apptainer definition or Dockerfile (compared with --singularity first)")
    p.add_argument("--singularity", type=Path, default=REPO / "Singularity",
                   help="the Apptainer definition a Dockerfile must agree with")
    p.add_argument("--venv", type=Path, required=True, help="virtual environment to create (fresh)")
    p.add_argument("--constraints", type=Path, default=None,
                   help="pip constraints file added to each install (e.g. constraints-cpu.txt)")
    p.add_argument("--templateflow-home", type=Path, default=None,
                   help="pre-fetched TemplateFlow folder; without it template lines are skipped")
    p.add_argument("--skip-install", action="store_true", help="reuse an existing --venv")
    args = p.parse_args(argv)

    if is_dockerfile(args.definition):
        sections = docker_sections(args.definition)
        problems = compare_definitions(sections, read_sections(args.singularity))
        for problem in problems:
            print(f"container_check: {args.definition} differs from {args.singularity}: {problem}",
                  file=sys.stderr)
        if problems:
            return 1
    else:
        sections = read_sections(args.definition)
    for required in ("post", "environment", "runscript", "test", "labels", "files"):
        if required not in sections:
            print(f"container_check: {args.definition} has no %{required} section", file=sys.stderr)
            return 1
    venv = args.venv.absolute()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(environment(sections["environment"]))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    if args.templateflow_home:
        env["TEMPLATEFLOW_HOME"] = str(args.templateflow_home.absolute())
    if not args.skip_install:
        if venv.exists() and any(venv.iterdir()):
            print(f"container_check: {venv} exists and is not empty; pass a fresh path",
                  file=sys.stderr)
            return 1
        _run([sys.executable, "-m", "venv", str(venv)], env)
        extra = ["-c", str(args.constraints.absolute())] if args.constraints else []
        for step in pip_steps(sections["post"]):
            _run([str(venv / "bin" / "python"), "-m", "pip", "install", *step, *extra], env)
    skipped = [line for line in sections["post"] if needs_templates(line)]
    kept = []
    for line in sections["test"]:
        if needs_templates(line) and not args.templateflow_home:
            skipped.append(line)
        else:
            kept.append(line)
    _run("set -eu\n" + "\n".join(kept), env, shell=True)  # one shell: variables carry over
    for line in skipped:
        print(f"skipped (needs network or TemplateFlow files): {line}")
    runscript = sections["runscript"]
    if runscript != ['exec l2s-bids "$@"']:
        print(f"container_check: unexpected %runscript {runscript}", file=sys.stderr)
        return 1
    _run([str(venv / "bin" / "l2s-bids"), "--help"], env)
    print("container_check: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
