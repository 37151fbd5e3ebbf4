#!/usr/bin/env python3
"""Check the Apptainer definition without a container runtime.

Extracts the ``python -m pip install`` steps of ``%post`` and the commands of ``%test`` from the
``Singularity`` file and runs them in a fresh virtual environment, with ``/opt/l2s-pipelines``
replaced by this checkout and the variables of ``%environment`` set. Build steps that need the
network (TemplateFlow downloads) are skipped; lines that read templates run only when
``--templateflow-home`` points at a pre-fetched TemplateFlow folder.

Usage (CI; CPU-only torch through the constraints file):
    python tools/container_check.py --venv /tmp/l2s-container-venv --constraints constraints-cpu.txt
Exit status: 0 when every step ran and succeeded, 1 otherwise (the failing step is printed).
"""

from __future__ import annotations

import argparse
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


def environment(lines: list[str]) -> dict[str, str]:
    """Variables of ``%environment`` (``export NAME=value``; ``${X:-d}`` gives d unless X set)."""
    env = {}
    for line in lines:
        m = re.match(r"^export (\w+)=(.*)$", line)
        if not m:
            continue
        name, value = m.group(1), shlex.split(m.group(2))[0] if m.group(2) else ""
        default = re.fullmatch(r"\$\{(\w+):-(.*)\}", value)
        if default:
            value = os.environ.get(default.group(1), default.group(2))
        env[name] = value
    return env


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
    p.add_argument("--definition", type=Path, default=REPO / "Singularity")
    p.add_argument("--venv", type=Path, required=True, help="virtual environment to create (fresh)")
    p.add_argument("--constraints", type=Path, default=None,
                   help="pip constraints file added to each install (e.g. constraints-cpu.txt)")
    p.add_argument("--templateflow-home", type=Path, default=None,
                   help="pre-fetched TemplateFlow folder; without it template lines are skipped")
    p.add_argument("--skip-install", action="store_true", help="reuse an existing --venv")
    args = p.parse_args(argv)

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
