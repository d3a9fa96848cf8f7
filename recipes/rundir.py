"""Run directories: the contract between stages (DESIGN.md, "Run directory contract").

    runs/<recipe>/<stage>/
      config.yaml     the fully resolved config (re-runnable with --config)
      manifest.json   stage, parent + hash of its weights, git commit, versions, data, seed, times, metrics
      model/          the output, from_pretrained-loadable, with its tokenizer
      checkpoints/    for --resume
      tb/             TensorBoard events

Files that another stage reads are written aside and renamed into place, so a crash never leaves
half a manifest or half a config behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from recipes.config import config_dict, to_yaml
from recipes.errors import UserError

PACKAGES = ("rlhf-lab", "torch", "transformers", "trl", "tokenizers", "datasets", "peft", "accelerate")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from the run's other readers
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def weights_hash(model_dir: Path) -> str:
    """sha256 over the weight files of a saved model, in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).glob("*") if p.suffix in (".safetensors", ".bin"))
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class RunDir:
    """One stage's run directory, e.g. runs/smoke/pretrain."""

    def __init__(self, runs_root: Path | str, recipe: str, stage: str):
        self.runs_root, self.recipe, self.stage = Path(runs_root), recipe, stage
        self.path = self.runs_root / recipe / stage

    config_path = property(lambda self: self.path / "config.yaml")
    manifest_path = property(lambda self: self.path / "manifest.json")
    model_dir = property(lambda self: self.path / "model")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    tb_dir = property(lambda self: self.path / "tb")

    @classmethod
    def for_config(cls, config: Any, stage: str) -> "RunDir":
        return cls(config.resolved_runs_root(), config.recipe, stage)

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{self.manifest_path}: corrupted manifest (not JSON)") from None

    def is_finished(self) -> bool:
        manifest = self.manifest()
        return bool(manifest and manifest.get("status") == "finished" and self.model_dir.is_dir())

    def start(self, config: Any, *, parent: "RunDir | None" = None, data: dict[str, Any] | None = None) -> None:
        """Claim the directory for this run; refuse to destroy a finished or resumable run by accident."""
        resume, overwrite = getattr(config, "resume", False), getattr(config, "overwrite", False)
        if self.path.exists() and not resume:
            if self.is_finished() and not overwrite:
                raise UserError(f"{self.path} already holds a finished {self.stage} run; "
                                "pass --overwrite to replace it, or --recipe NAME to run elsewhere")
            if self.checkpoints_dir.is_dir() and any(self.checkpoints_dir.iterdir()) and not overwrite:
                raise UserError(f"{self.path} holds an interrupted {self.stage} run; "
                                "pass --resume to continue it, or --overwrite to start over")
            shutil.rmtree(self.path)
        if resume and self.is_finished():
            raise UserError(f"{self.path} already holds a finished {self.stage} run: nothing to resume "
                            "(pass --overwrite to run it again)")
        if resume and self.config_path.is_file():
            self._check_same_config(config)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, to_yaml(config))
        previous = self.manifest() if resume else None
        self._write_manifest({
            "stage": self.stage,
            "recipe": self.recipe,
            "status": "running",
            "parent": None if parent is None else {
                "stage": parent.stage, "dir": str(parent.path), "weights_sha256": weights_hash(parent.model_dir)},
            "git_commit": git_commit(),
            "versions": package_versions(),
            "data": data or {},
            "seed": getattr(config, "seed", None),
            "started": (previous or {}).get("started", now()),
            "resumed": ((previous or {}).get("resumed", []) + [now()]) if previous else [],
            "finished": None,
            "metrics": {},
        })

    def _check_same_config(self, config: Any) -> None:
        import yaml

        saved = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        current = config_dict(config)
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if changed:
            raise UserError(f"{self.config_path}: --resume needs the same config as the interrupted run; "
                            f"these keys differ: {', '.join(changed)}")

    def resume_checkpoint(self, resume: bool) -> str | None:
        """With --resume, the newest complete trainer checkpoint (checkpoint-N whose trainer_state.json,
        written last, exists), so a run killed while saving resumes from the one before; else None."""
        if not resume:
            return None
        done = [p for p in self.checkpoints_dir.glob("checkpoint-*")
                if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
        if not done:
            print(f"no complete checkpoint in {self.checkpoints_dir}; starting from step 0")
            return None
        latest = max(done, key=lambda p: int(p.name.split("-")[-1]))
        print(f"resuming from {latest}")
        return str(latest)

    def save_model(self, model, tokenizer) -> None:
        """`save_pretrained` model and tokenizer into model/, written aside and renamed into place."""
        tmp = self.path / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if self.model_dir.exists():
            shutil.rmtree(self.model_dir)
        os.replace(tmp, self.model_dir)

    def finish(self, metrics: dict[str, Any]) -> None:
        manifest = self.manifest() or {}
        manifest.update(status="finished", finished=now(), metrics=metrics)
        self._write_manifest(manifest)

    def update(self, **fields: Any) -> None:
        manifest = self.manifest() or {}
        manifest.update(fields)
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def require_parent(config: Any, stage: str) -> RunDir:
    """The recipe's finished run of an earlier stage, or one line saying which stage to run first and how."""
    parent = RunDir.for_config(config, stage)
    if not parent.is_finished():
        command = f"rlhf-lab {stage} --config recipes/{config.recipe}/{stage}.yaml"
        if config.runs_root is not None:
            command += f" --runs_root {config.runs_root}"
        raise UserError(f"{parent.path} has no finished {stage} run: run `{command}` first")
    return parent
