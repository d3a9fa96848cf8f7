"""Run directories: the contract between stages (docs/operating.md, "Run directories").

    runs/<recipe>/<stage>/
      config.yaml     the fully resolved config (re-runnable with --config)
      manifest.json   stage, parents (parent_entry: role, run, model, weights sha256), git commit, versions,
                      data, seed, times, metrics
      model/          the output, from_pretrained-loadable, with its tokenizer
      checkpoints/    for --resume
      tb/             TensorBoard events

Files that another stage reads are written aside and renamed into place, so a crash never leaves
half a manifest or half a config behind. A rerun of a finished stage (--overwrite) runs whole in
runs/<recipe>/.<stage>.rerun/ and is swapped into place only once it has finished: until then, and
forever if it crashes, the finished run stays where it was, untouched, for the stages that read it.
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

from recipes.core.config import config_dict, to_yaml
from recipes.core.errors import UserError

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


def atomic_savefig(fig, path: Path, **kwargs) -> None:
    """matplotlib's `fig.savefig`, written aside and renamed into place like every other output."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, **kwargs)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step where Linux allows it (renameat2 RENAME_EXCHANGE), else in two renames."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
            return
    except (AttributeError, OSError):
        pass
    aside = a.with_name(a.name + ".swap")
    os.replace(a, aside)
    os.replace(b, a)
    os.replace(aside, b)


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


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Every stage's complete checkpoints (checkpoint-N or step-N whose trainer_state.json, or PPO's state.pt,
    was written last), oldest first: one killed while saving is not among them."""
    done = [p for p in Path(checkpoints_dir).glob("*-*") if p.name.split("-")[-1].isdigit()
            and not p.name.startswith(".")  # a save in progress (.tmp-step-N) is not a checkpoint yet
            and ((p / "trainer_state.json").is_file() or (p / "state.pt").is_file())]
    return sorted(done, key=step_of)


def parent_entry(role: str, model_dir: Path | str, run: "RunDir | None" = None) -> dict[str, Any]:
    """One entry of a manifest's `parents`, the same shape for every stage: the parent's role (the registry's
    name for the stage it stands for: pretrain, sft, reward), the run it came from (None for a model given by
    path), the model folder (a hub model's local snapshot) and the sha256 of its weights."""
    model_dir = Path(run.model_dir if run is not None else model_dir)
    return {"role": role, "stage": run.stage if run is not None else None,
            "run": str(run.path) if run is not None else None, "model": str(model_dir),
            "weights_sha256": weights_hash(model_dir) if model_dir.is_dir() else None}


def prune_checkpoints(checkpoints_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints (`save_total_limit`; 0 or None keeps every one)."""
    for old in complete_checkpoints(checkpoints_dir)[:-keep] if keep and keep > 0 else []:
        shutil.rmtree(old)


def changed_keys(config_path: Path, config: Any) -> list[str] | None:
    """Keys whose value differs between a saved config.yaml and `config` (None: no readable config.yaml)."""
    import yaml

    try:
        saved = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    current = config_dict(config)
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def check_checkpoint(checkpoint: Path) -> None:
    """Refuse, in one line, a checkpoint with a damaged file before a resume tries to load it: the header of each
    safetensors file, the zip directory of each torch file and each JSON file are read (not the tensors)."""
    import zipfile

    for path in sorted(Path(checkpoint).rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            elif path.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(path) as archive:
                    archive.namelist()
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except Exception as err:  # each reader has its own error types for a truncated or garbled file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserError(f"{path}: damaged checkpoint file ({reason}); delete {checkpoint} to resume from the "
                            "checkpoint before it, or pass --overwrite to start over") from None


def load_checkpoint_state(path: Path | str, map_location=None):
    """A torch state file of a checkpoint, loaded as tensors and plain data only (`weights_only=True`, numpy's
    arrays allowed as transformers allows them for its RNG states). A run directory may come from someone
    else: a pickle that names any other Python object is refused in one line instead of being run."""
    import pickle

    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        culprit = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "")
        raise UserError(f"{path}: refused to load: the file holds Python objects other than tensors and plain "
                        f"data, which loading could run as code{f' ({culprit})' if culprit else ''}; delete the "
                        "checkpoint or pass --overwrite to start over") from None


class RunDir:
    """One stage's run directory, e.g. runs/smoke/pretrain."""

    def __init__(self, runs_root: Path | str, recipe: str, stage: str):
        self.runs_root, self.recipe, self.stage = Path(runs_root), recipe, stage
        self.final = self.runs_root / recipe / stage
        self.rerun_path = self.runs_root / recipe / f".{stage}.rerun"  # where an --overwrite rerun runs
        self.path = self.final  # where this run writes: final, or rerun_path once start() stages a rerun

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
        """Finished, with its model/ still there (unless the stage makes no model: see finish())."""
        manifest = self.manifest()
        return bool(manifest and manifest.get("status") == "finished"
                    and (self.model_dir.is_dir() or manifest.get("makes_model") is False))

    def interrupted_rerun(self) -> "RunDir | None":
        """The unfinished --overwrite rerun beside a finished run, as a RunDir of its own, or None."""
        staged = RunDir(self.runs_root, self.recipe, self.stage)
        staged.path = self.rerun_path
        manifest = staged.manifest() if self.rerun_path.is_dir() else None
        return staged if manifest and manifest.get("status") != "finished" else None

    def follow(self) -> "RunDir":
        """On the other processes of a multi-process run, after the main one's start(): write where it writes."""
        self.path = self.rerun_path if self.rerun_path.is_dir() else self.final
        return self

    def start(self, config: Any, *, parents: list[dict] = (), data: dict[str, Any] | None = None) -> None:
        """Claim the directory for this run; refuse to destroy a finished or resumable run by accident.
        `parents` (from `parent_entry`) are the models the run starts from or scores with.

        Afterwards the rerun directory exists exactly when this run is a staged rerun (see follow())."""
        resume, overwrite = getattr(config, "resume", False), getattr(config, "overwrite", False)
        staged = self.interrupted_rerun()
        if self.rerun_path.is_dir() and staged is None:
            shutil.rmtree(self.rerun_path)  # the finished leftover of a swap a crash cut short
        if staged is not None and resume:
            self.path = self.rerun_path
        elif self.path.exists() and not resume:
            finished = self._finished_unless_overwriting(overwrite)
            if finished and not overwrite:
                raise UserError(
                    f"{self.path} already holds a finished {self.stage} run; "
                    + (f"an interrupted rerun of it is in {self.rerun_path}: pass --resume to continue the rerun, "
                       "or --overwrite to start it over" if staged else
                       "pass --overwrite to replace it, or --recipe NAME to run elsewhere"))
            if self.checkpoints_dir.is_dir() and any(self.checkpoints_dir.iterdir()) and not overwrite:
                raise UserError(f"{self.path} holds an interrupted {self.stage} run; "
                                "pass --resume to continue it, or --overwrite to start over")
            if staged is not None:
                shutil.rmtree(self.rerun_path)
            if finished:
                self.path = self.rerun_path  # the finished run stays in place until this one finishes
            else:
                shutil.rmtree(self.path)
        elif staged is not None and not resume:
            if not overwrite:
                raise UserError(f"{self.rerun_path} holds an interrupted {self.stage} run; "
                                "pass --resume to continue it, or --overwrite to start over")
            shutil.rmtree(self.rerun_path)
        if resume and self.is_finished():
            raise UserError(f"{self.path} already holds a finished {self.stage} run: nothing to resume "
                            "(pass --overwrite to run it again)")
        if resume and self.config_path.is_file():
            self._check_same_config(config)
        if resume and self.latest_checkpoint() is not None:
            check_checkpoint(self.latest_checkpoint())  # before the manifest records a resume
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, to_yaml(config))
        previous = self.manifest() if resume else None
        self._write_manifest({
            "stage": self.stage,
            "recipe": self.recipe,
            "status": "running",
            "parents": list(parents),
            "git_commit": git_commit(),
            "versions": package_versions(),
            "data": data or {},
            "seed": getattr(config, "seed", None),
            "started": (previous or {}).get("started", now()),
            "resumed": ((previous or {}).get("resumed", []) + [now()]) if previous else [],
            "finished": None,
            "metrics": {},
        })

    def _finished_unless_overwriting(self, overwrite: bool) -> bool:
        """is_finished(), except that --overwrite may replace a run whose manifest is unreadable."""
        try:
            return self.is_finished()
        except UserError:
            if overwrite:
                return False
            raise

    def _check_same_config(self, config: Any) -> None:
        changed = changed_keys(self.config_path, config)
        if changed is None:
            raise UserError(f"{self.config_path}: --resume needs the interrupted run's config.yaml, which is missing "
                            "or unreadable; pass --overwrite to start over")
        if changed:
            raise UserError(f"{self.config_path}: --resume needs the same config as the interrupted run; "
                            f"these keys differ: {', '.join(changed)}")

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        done = complete_checkpoints(self.checkpoints_dir)
        return done[-1] if done else None

    def resume_checkpoint(self, resume: bool) -> str | None:
        """With --resume, the newest complete trainer checkpoint (checkpoint-N whose trainer_state.json,
        written last, exists), so a run killed while saving resumes from the one before; else None."""
        if not resume:
            return None
        latest = self.latest_checkpoint()
        if latest is None:
            print(f"no complete checkpoint in {self.checkpoints_dir}; starting from step 0")
            return None
        check_checkpoint(latest)
        print(f"resuming from {latest}")
        return str(latest)

    def save_model(self, model, tokenizer) -> None:
        """`save_pretrained` model and tokenizer into model/, written aside and renamed into place."""
        tmp = self.path / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if self.model_dir.exists():  # swapped in one step, so model/ is never missing or half-written
            exchange(tmp, self.model_dir)
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, self.model_dir)

    def finish(self, metrics: dict[str, Any], *, makes_model: bool = True) -> None:
        """Mark the run finished; a staged rerun then takes the finished run's place, which is removed.
        A stage with no model of its own (an experiment whose models live in runs of their own) says so."""
        manifest = self.manifest() or {}
        manifest.update(status="finished", finished=now(), metrics=metrics, makes_model=makes_model)
        self._write_manifest(manifest)
        if self.path == self.rerun_path:
            if self.final.exists():
                exchange(self.rerun_path, self.final)
                shutil.rmtree(self.rerun_path)
            else:
                os.replace(self.rerun_path, self.final)
            self.path = self.final

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
