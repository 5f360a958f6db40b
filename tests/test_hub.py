"""Hub ids as model and data paths (tiller/hub.py): which strings are ids, each fetched once through `download`
(replaced here by a copy of a local fixture: nothing ever goes to the network), the config read downstream
naming the local folder, `tiller run`'s children given local paths, and a hub that cannot be reached one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tiller import hub
from tiller.cli import app
from tiller.config import ConfigError, load_config

runner = CliRunner()
ROOT = Path(__file__).parents[1]
_real_download = hub.download  # the module's own, kept before the fixtures replace it


class Calls(list):
    """The (repo_id, revision, repo_type) `download` was called with; `datasets`: repo id -> fixture folder."""

    datasets: dict[str, Path]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """A test that reaches the real download fails at once (pytest.fail is no Exception: nothing catches it)."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        pytest.fail(f"a real hub download was attempted: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(hub, "download", refuse)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, tiny_policy_dir):
    """`download` copying local fixtures: models are the tiny policy, datasets the folders in `datasets`.
    Returns the calls it was given."""
    calls = Calls()
    calls.datasets = datasets = {}

    def download(repo_id: str, revision: str | None, repo_type: str) -> Path:
        calls.append((repo_id, revision, repo_type))
        out = tmp_path / "hub-cache" / repo_type / f"{repo_id.replace('/', '--')}@{revision or 'main'}"
        if not out.exists():
            shutil.copytree(tiny_policy_dir if repo_type == "model" else datasets[repo_id], out)
        return out

    monkeypatch.setattr(hub, "download", download)
    return calls


@pytest.mark.parametrize("value", [
    "Qwen/Qwen2.5-0.5B-Instruct", "trl-lib/ultrafeedback-prompt", "HuggingFaceTB/SmolLM2-135M-Instruct@main",
    "owner/name@v1.0", "owner/name@refs/pr/1", "a/b",
])
def test_hub_ids_are_recognised(value):
    assert hub.looks_like_hub_id(value)


@pytest.mark.parametrize("value", [
    None, "", "./owner/name", "../owner/name", "/abs/owner/name", "~/owner/name", "owner", "a/b/c",
    "data/prompts.jsonl", "configs/demo.yaml", "keys/server.key_secret", "owner/model.gguf", "owner/name@",
    "runs/tiny-policy", "owner\\name", "owner/ name", "-owner/name",
])
def test_local_paths_are_not_hub_ids(value):
    assert not hub.looks_like_hub_id(value)


def test_an_existing_local_folder_wins_over_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.looks_like_hub_id("a/b")
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert not hub.looks_like_hub_id("a/b")
    cfg = load_config(None, ["model.path=a/b"])
    assert hub.resolve_hub_ids(cfg).model.path == "a/b"  # no download: the autouse fixture would fail it


def test_the_run_folder_is_local_whatever_output_dir_is_called():
    assert hub.looks_like_hub_id("out/tiny")
    assert not hub.looks_like_hub_id("out/tiny", run_root="out")
    cfg = hub.resolve_hub_ids(load_config(None, ["output_dir=out", "model.path=out/tiny", "model.build_tiny=true"]))
    assert cfg.model.path == "out/tiny"


def test_a_model_hub_id_becomes_the_downloaded_folder(fake_hub, tiny_policy_dir):
    cfg = hub.resolve_hub_ids(load_config(None, [
        "model.path=Qwen/Qwen2.5-0.5B-Instruct", "eval.baseline_path=Qwen/Qwen2.5-0.5B-Instruct",
        "judge.reward_model_path=owner/rm@v2"]))
    path = Path(cfg.model.path)
    assert path.is_absolute() and (path / "config.json").read_text() == (tiny_policy_dir / "config.json").read_text()
    assert cfg.eval.baseline_path == cfg.model.path  # one repository, one download
    assert fake_hub == [("Qwen/Qwen2.5-0.5B-Instruct", None, "model"), ("owner/rm", "v2", "model")]
    assert Path(cfg.judge.reward_model_path).name == "owner--rm@v2"


def test_a_revision_is_passed_to_the_download_and_the_cli_prints_the_local_folder(fake_hub, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  path: HuggingFaceTB/SmolLM2-135M-Instruct@abc123\n")
    result = runner.invoke(app, ["learner", "--config", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert fake_hub == [("HuggingFaceTB/SmolLM2-135M-Instruct", "abc123", "model")]
    dumped = yaml.safe_load(result.stdout)
    assert dumped["model"]["path"] == str(tmp_path / "hub-cache" / "model" / "HuggingFaceTB--SmolLM2-135M-Instruct@abc123")


def test_the_real_download_asks_snapshot_download_for_the_repository_and_revision(monkeypatch, tmp_path):
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: asked.append((repo_id, kw))
                        or str(tmp_path))
    monkeypatch.setattr(hub, "download", _real_download)  # the autouse fixture replaced it
    assert hub.download("trl-lib/prefs", "v1", "dataset") == tmp_path
    assert hub.download("owner/model", None, "model") == tmp_path
    (ds_id, ds_kw), (model_id, model_kw) = asked
    assert (ds_id, ds_kw["repo_type"], ds_kw["revision"]) == ("trl-lib/prefs", "dataset", "v1")
    assert (model_id, model_kw["repo_type"], model_kw["revision"]) == ("owner/model", "model", None)
    assert "original/*" in model_kw["ignore_patterns"] and ds_kw["ignore_patterns"] is None


def _parquet_prompts(folder: Path, prompts: list[str]) -> Path:
    import datasets

    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list([{"prompt": p, "id": i} for i, p in enumerate(prompts)]).to_parquet(
        str(folder / "data" / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text("# prompts\n")  # as every hub dataset has
    return folder


def test_a_dataset_hub_id_is_read_by_the_prompt_loader(fake_hub, tmp_path):
    from tiller.learner.prompts import read_rows

    fake_hub.datasets["trl-lib/prompts"] = _parquet_prompts(tmp_path / "src", ["abc", "hello there"])
    # jsonl is what a user may write for prompts; a snapshot is a folder, so it is read as a dataset
    cfg = hub.resolve_hub_ids(load_config(None, ["data.source=jsonl", "data.path=trl-lib/prompts@v3"]))
    assert fake_hub == [("trl-lib/prompts", "v3", "dataset")]
    assert cfg.data.source == "dataset" and Path(cfg.data.path).is_dir()
    assert [value for _, value, _ in read_rows(cfg.data)] == ["abc", "hello there"]


def test_letters_prompts_never_fetch_their_unused_path():
    cfg = load_config(None, ["data.source=letters", "data.path=owner/name"])
    assert hub.resolve_hub_ids(cfg).data.path == "owner/name"


def test_an_offline_stage_reads_a_hub_dataset_of_jsonl_files(fake_hub, tmp_path):
    from tiller.models import JUDGE_ALPHABET, build_char_tokenizer
    from tiller.offline.data import Source, check_sources, read_preferences

    folder = tmp_path / "prefs"
    (folder / "data").mkdir(parents=True)
    rows = [{"prompt": "hi ", "chosen": "yes", "rejected": "no"}, {"prompt": "a ", "chosen": "b", "rejected": "c"}]
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "data" / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")  # only train is read
    fake_hub.datasets["owner/prefs"] = folder
    config = tmp_path / "dpo.yaml"
    config.write_text("dpo:\n  data:\n    - {path: owner/prefs}\n    - {path: owner/prefs, weight: 2.0}\n")
    cfg = hub.resolve_hub_ids(load_config(config))
    assert fake_hub == [("owner/prefs", None, "dataset")]
    check_sources(cfg.dpo.data, "dpo")
    pairs = read_preferences([Source(s.path, s.weight) for s in cfg.dpo.data], build_char_tokenizer(JUDGE_ALPHABET))
    assert len(pairs) == 6 and pairs[0].where.endswith("row 1")
    result = runner.invoke(app, ["dpo", str(config), "--dry-run"])  # the command resolves it itself
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["dpo"]["data"][0]["path"] == cfg.dpo.data[0].path


def test_an_unreachable_hub_is_one_line_naming_the_setting(monkeypatch, tmp_path):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def unreachable(repo_id, revision, repo_type):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nAn error happened")

    monkeypatch.setattr(hub, "download", unreachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = runner.invoke(app, ["learner", "--dry-run", "model.path=Qwen/Qwen2.5-0.5B-Instruct"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ['config error: model.path: "Qwen/Qwen2.5-0.5B-Instruct" is not a local directory and the '
                     "Hugging Face hub cannot be reached from here (Got: ConnectError: [Errno -2] Name or service "
                     "not known); download it where there is a network and pass the directory"], result.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r'^sft.data\[1\].path: "owner/data" is not a local file or folder and .*'
                                          r"\(HF_HUB_OFFLINE is set and it is not in the local hub cache\)"):
        hub.resolve_hub_ids(load_config(None, ["sft.data=[{path: " + str(tmp_path) + "}, {path: owner/data}]"]))


def test_a_repository_the_hub_does_not_have_is_named(monkeypatch):
    from huggingface_hub.errors import RepositoryNotFoundError

    def missing(repo_id, revision, repo_type):
        exc = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # its __init__ wants an HTTP response
        Exception.__init__(exc, "404 Client Error")
        raise exc

    monkeypatch.setattr(hub, "download", missing)
    with pytest.raises(ConfigError, match=r'^judge.model_path: "owner/typo" is not a local directory, and the '
                                          r"Hugging Face hub has no model owner/typo"):
        hub.resolve_hub_ids(load_config(None, ["judge.model_path=owner/typo"]))


def test_build_tiny_never_builds_a_random_model_at_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, flag in (("model.path", "model.build_tiny"), ("judge.model_path", "judge.build_tiny")):
        result = runner.invoke(app, ["learner", "--dry-run", f"{key}=Qwen/Qwen2.5-0.5B-Instruct", f"{flag}=true"])
        assert result.exit_code == 2, result.output
        assert f"{key}: \"Qwen/Qwen2.5-0.5B-Instruct\" names a Hugging Face hub model, and {flag}" in result.output
    assert not (tmp_path / "Qwen").exists()
    # the demos' own paths under runs/ are still built there
    cfg = hub.resolve_hub_ids(load_config(ROOT / "configs/demo.yaml"))
    assert cfg.model.path == "runs/tiny-policy" and cfg.model.build_tiny


class _Exited:
    """A child process that has already ended well."""

    pid, returncode = 4242, 0

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0


def test_tiller_run_fetches_once_and_hands_its_children_local_paths(fake_hub, tmp_path, monkeypatch, free_address):
    import importlib

    run_module = importlib.import_module("tiller.cli.run")  # tiller.cli.run is also the command function

    fake_hub.datasets["owner/prompts"] = _parquet_prompts(tmp_path / "src", ["abc", "de"])
    started: list[list[str]] = []
    monkeypatch.setattr(run_module, "_spawn", lambda slot, args, log, append=False: started.append(args) or _Exited())
    args = ["run", str(ROOT / "configs/demo.yaml"), f"output_dir={tmp_path / 'runs'}", f"learner.address={free_address}",
            "model.path=owner/policy@r1", "model.build_tiny=false", "data.source=dataset", "data.path=owner/prompts",
            "run.placement=off", "--actors", "1", "--judges", "1"]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "owner/" not in dry.stdout and not started
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(a[0] for a in started) == ["actor", "judge", "learner"]
    for child in started:  # every child reads the launcher's config file, and that names the downloaded folders
        child_cfg = load_config(child[child.index("--config") + 1])
        assert child_cfg.model.path == str(tmp_path / "hub-cache" / "model" / "owner--policy@r1")
        assert child_cfg.data.path == str(tmp_path / "hub-cache" / "dataset" / "owner--prompts@main")
        assert hub.resolve_hub_ids(child_cfg) == child_cfg  # nothing left for a child to fetch
    # the dry run and the run each resolved once: the children fetched nothing
    assert fake_hub == [("owner/policy", "r1", "model"), ("owner/prompts", None, "dataset")] * 2
