"""Build the wild corpus: ONNX files made by exporters and tools nobody on the team wrote.

    python tools/wild_corpus.py build [--family F ...] [--only MODEL ...] [--force]
    python tools/wild_corpus.py list

Each family is a script, tools/wild/<family>.py, with a module-level REQUIREMENTS list. The
family gets its own virtual environment (<cache>/venvs/<family>) with those requirements plus
onnx, onnxruntime and numpy, and runs there; spa and its tests never need any of them. Models,
their sample inputs and a manifest go to <cache>/models/<family>/; <cache>/manifest.json joins
every family's. The cache is $SPA_WILD_CORPUS, by default ~/.cache/spa/wild: never inside the repo.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

FAMILIES_DIR = Path(__file__).resolve().parent / "wild"
BASE_REQUIREMENTS = ["onnx", "onnxruntime", "numpy"]


def cache_dir() -> Path:
    return Path(os.environ.get("SPA_WILD_CORPUS", Path.home() / ".cache" / "spa" / "wild")).expanduser()


def families() -> dict[str, Path]:
    return {p.stem: p for p in sorted(FAMILIES_DIR.glob("*.py")) if p.stem != "common" and not p.stem.startswith("_")}


def requirements(script: Path) -> list[str]:
    """The script's REQUIREMENTS, read without importing it (its imports live in its venv)."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REQUIREMENTS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def venv_python(family: str, script: Path) -> Path:
    """The family's interpreter, created and filled on first use (again when REQUIREMENTS change)."""
    venv = cache_dir() / "venvs" / family
    python = venv / "bin" / "python"
    wanted = requirements(script) + BASE_REQUIREMENTS
    stamp = venv / "spa-requirements.txt"
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *wanted], check=True)
    stamp.write_text(digest)
    return python


def build(names: list[str] | None, only: list[str] | None, force: bool) -> None:
    known = families()
    for name in names or list(known):
        if name not in known:
            raise SystemExit(f"unknown family {name!r} (have: {', '.join(known)})")
        out = cache_dir() / "models" / name
        command = [str(venv_python(name, known[name])), str(known[name]), "--out", str(out)]
        command += (["--only", *only] if only else []) + (["--force"] if force else [])
        env = dict(os.environ, PYTHONPATH=str(FAMILIES_DIR))
        print(f"== {name}", flush=True)
        subprocess.run(command, check=False, env=env)
    join_manifests()


def join_manifests() -> list[dict]:
    entries = []
    for manifest in sorted((cache_dir() / "models").glob("*/manifest.json")):
        for entry in json.loads(manifest.read_text()):
            entry = dict(entry, file=f"models/{manifest.parent.name}/{entry['file']}",
                         inputs=f"models/{manifest.parent.name}/{entry['inputs']}")
            entries.append(entry)
    (cache_dir() / "manifest.json").write_text(json.dumps(entries, indent=1))
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build")
    b.add_argument("--family", nargs="*")
    b.add_argument("--only", nargs="*")
    b.add_argument("--force", action="store_true")
    commands.add_parser("list")
    args = parser.parse_args()
    if args.command == "build":
        build(args.family, args.only, args.force)
    else:
        for entry in join_manifests():
            status = entry.get("error") or f"{entry['source']} / {entry['exporter']}"
            print(f"{entry['family']:14} {entry['name']:32} {status}")


if __name__ == "__main__":
    main()
