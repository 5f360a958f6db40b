"""Models and datasets named by Hugging Face hub id, fetched once before anything reads them.

    cfg = resolve_hub_ids(load_config("configs/qwen.yaml"))   # model.path: Qwen/Qwen2.5-0.5B-Instruct

A path setting that is not a local file or folder and looks like a hub id (`owner/name`, or `owner/name@revision`
to pin a branch, tag or commit) is downloaded with `huggingface_hub.snapshot_download` into the hub cache, and
the config gets the snapshot folder in its place, so everything downloaded is then read as a local directory.
Something that exists locally always wins, and so does a path under the run folder (`runs/tiny-policy` is the
place a stage writes, or a tiny model is built, never a hub user called `runs`).

Model settings (`MODEL_FIELDS`) fetch a model repository; `data.path` (when `data.source` is not `letters`) and
the offline stages' `sft/rm/dpo.data[].path` fetch a dataset repository. A dataset snapshot is a folder of data
files (parquet, jsonl, json or csv, with a README naming their splits): `data.source: dataset` reads it, and
a hub id under `data.source: jsonl` is switched to `dataset` in the resolved config (a snapshot is a folder,
which the jsonl source cannot read); the offline stages read its `train` split (`read_folder`).

Commands resolve hub ids as they load their config (cli/common.resolve); `tiller run` writes the resolved config
for its children, so the download happens once, in the launcher, and every process reads the same files. On a
machine that cannot reach the hub (or with HF_HUB_OFFLINE set and nothing cached) the error is one line naming
the setting. Tests replace `download`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

from tiller.config import Config, ConfigError

# owner/name with the hub's characters, then an optional @revision (a branch may hold slashes: refs/pr/1)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?")
# what a data, config or key file ends with: such a path is a missing file, never a repository
FILE_SUFFIXES = {".jsonl", ".json", ".yaml", ".yml", ".txt", ".csv", ".parquet", ".arrow", ".md", ".py", ".toml",
                 ".gguf", ".safetensors", ".bin", ".pt", ".key", ".key_secret"}
# dotted setting -> the build_tiny flag beside it; the model settings fetch model repositories
MODEL_FIELDS = {"model.path": "model.build_tiny", "judge.model_path": "judge.build_tiny",
                "judge.reward_model_path": None, "learner.pg.critic_path": None, "eval.baseline_path": None,
                "eval.reward_model_path": None, "redteam.attacker_path": None, "safety.model_path": None}
# weights in formats transformers does not load (TF, Flax, ONNX, GGUF, a Llama repo's original/ copy): never fetched
_NOT_LOADED = ["*.h5", "*.msgpack", "*.onnx", "onnx/*", "*.gguf", "original/*", "*.pth", "*.ot", "*.tflite"]


def looks_like_hub_id(value: str | None, run_root: str = "runs") -> bool:
    """True for `owner/name` or `owner/name@revision` that is no local path: nothing there, no leading `./`, `/`
    or `~`, one slash, not a file name (.jsonl, .yaml, ...), and not under `run_root` (the run folder)."""
    if not value or not _HUB_ID.fullmatch(value) or Path(value).exists():
        return False
    repo = value.split("@", 1)[0]
    owner, name = repo.split("/")
    return owner != run_root and Path(name).suffix.lower() not in FILE_SUFFIXES


def download(repo_id: str, revision: str | None, repo_type: str) -> Path:
    """A repository's snapshot folder in the hub cache (a no-op when it is there already)."""
    from huggingface_hub import snapshot_download

    ignore = _NOT_LOADED if repo_type == "model" else None
    return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, ignore_patterns=ignore))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def fetch(value: str, key: str, repo_type: str) -> str:
    """Download `value` (owner/name[@revision]) for the setting `key`; any failure is one ConfigError line."""
    repo_id, _, revision = value.partition("@")
    what = "directory" if repo_type == "model" else "file or folder"
    try:  # the hub library draws its own progress bars; a failure is our one line, nothing printed before it
        folder = download(repo_id, revision or None, repo_type)
    except Exception as exc:  # the hub's errors (and httpx's, and a full disk) all end here as one line
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(exc, RevisionNotFoundError):
            raise ConfigError(f"{key}: the Hugging Face hub's {repo_type} {repo_id} has no revision {revision!r}") \
                from None
        if isinstance(exc, RepositoryNotFoundError):  # also gated and private ones without a token
            raise ConfigError(f'{key}: "{value}" is not a local {what}, and the Hugging Face hub has no {repo_type} '
                              f"{repo_id} this machine may read (a typo, or a private or gated one: `hf auth login` "
                              "first)") from None
        lines = str(exc).strip().splitlines()
        reason = ("HF_HUB_OFFLINE is set and it is not in the local hub cache" if _offline()
                  else lines[0][:200] if lines else type(exc).__name__)
        raise ConfigError(f'{key}: "{value}" is not a local {what} and the Hugging Face hub cannot be reached from '
                          f"here ({reason}); download it where there is a network and pass the directory") from None
    print(f"{key}: {value} from the Hugging Face hub is {folder}", file=sys.stderr, flush=True)
    return str(folder)


def resolve_hub_ids(cfg: Config) -> Config:
    """`cfg` with every hub id among its model and dataset paths replaced by its downloaded snapshot folder
    (each repository fetched once); a build_tiny flag on a hub id is refused rather than build a random
    model at a path meant to name a real one."""
    run_root = Path(cfg.output_dir).parts[0] if cfg.output_dir and not Path(cfg.output_dir).is_absolute() else "runs"
    fetched: dict[tuple[str, str], str] = {}

    def local(value: str | None, key: str, repo_type: str) -> str | None:
        if not looks_like_hub_id(value, run_root):
            return value
        if (value, repo_type) not in fetched:
            fetched[value, repo_type] = fetch(value, key, repo_type)
        return fetched[value, repo_type]

    for key, flag in MODEL_FIELDS.items():
        value = _get(cfg, key)
        if flag and _get(cfg, flag) and looks_like_hub_id(value, run_root):
            raise ConfigError(f'{key}: "{value}" names a Hugging Face hub model, and {flag} builds a random-init '
                              f"tiny model only at a local path: drop {flag} to download it, or write ./{value} "
                              "to build a tiny model there")
        cfg = _set(cfg, key, local(value, key, "model"))
    scorers = [dataclasses.replace(s, reward_model_path=local(s.reward_model_path, f"judge.scorers[{i}]."
                                                              "reward_model_path", "model"))
               for i, s in enumerate(cfg.judge.scorers)]
    cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, scorers=scorers))
    if cfg.data.source != "letters" and looks_like_hub_id(cfg.data.path, run_root):
        # a snapshot is a folder: the `dataset` source reads one (parquet, jsonl, json, csv files), `jsonl` cannot
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, source="dataset", path=local(cfg.data.path, "data.path", "dataset")))
    for stage in ("sft", "rm", "dpo"):
        section = getattr(cfg, stage)
        data = [dataclasses.replace(s, path=local(s.path, f"{stage}.data[{i}].path", "dataset"))
                for i, s in enumerate(section.data)]
        cfg = dataclasses.replace(cfg, **{stage: dataclasses.replace(section, data=data)})
    return cfg


def _get(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _set(node: Any, dotted: str, value: Any) -> Any:
    """A copy of the frozen tree `node` with the setting `dotted` replaced."""
    head, _, rest = dotted.partition(".")
    return dataclasses.replace(node, **{head: _set(getattr(node, head), rest, value) if rest else value})


def read_folder(path: Path, split: str, key: str, split_key: str | None = None):
    """The `split` of a dataset folder, as a `datasets.Dataset`: a `save_to_disk` folder, or a folder of data
    files (a hub snapshot: parquet, jsonl, json or csv, the splits named by its README or its file names).
    `key` names the setting in errors, `split_key` the one that chose the split (default: `key`)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{key}: reading a dataset folder needs the `datasets` package "
                          "(pip install 'tiller[data]')") from None
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            data = datasets.load_from_disk(str(path))
        else:
            data = datasets.load_dataset(str(path))
    except Exception as exc:  # the library's own errors name the problem; say which folder
        raise ConfigError(f"{key}: {path}: the datasets library could not read it "
                          f"({' '.join(str(exc).split())[:300]})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ConfigError(f"{split_key or key}: {path} has splits {sorted(data)}, not {split!r}")
        data = data[split]
    return data
