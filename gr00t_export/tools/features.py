"""`gr00t-export features`: the backbone features of every step of a LeRobot dataset, through an exported build.

A smaller policy, a probe or a new action head can train on what the exported vision-language backbone sees
without running it again: each dataset step goes through the stages up to the one producing `backbone_features`
(found from the graph spec's `from:` edges, so any family's build works), never the denoiser.

Batching: steps are read in dataset order, on a background thread, and run B at a time; a batch only holds steps
with the same instruction, so no prompt is ever padded and each step's features are exactly those of the step run
alone (RoPE is relative, so left padding would only add rounding, but it also spends compute on pad tokens).
Each step is stored unpadded: its own L tokens, with the tokenizer's attention mask and token ids (which tell
image tokens from text), as the action head receives them.

Files (`--out`, by suffix):
- `.safetensors`: ragged tensors: `features` (sum L, D) in the build's dtype, `attention_mask` and `input_ids`
  (sum L,), `token_offsets` (N + 1,) (step i is rows token_offsets[i]:token_offsets[i + 1]), `episode_index`,
  `frame_index`, `instruction_index` (N,); the header's `gr00t_export.features` entry holds the metadata (JSON:
  the build's seal and source fingerprint, dataset, stages, instructions).
- `.parquet`: one row per step (episode_index, frame_index, instruction, features as list<fixed_size_list<D>>,
  attention_mask, input_ids), one row group per chunk, streamed (the output may exceed memory); bf16 features are
  stored as their uint16 bit patterns; the schema's `gr00t_export.features` metadata is the same JSON.

Resumable: steps are processed in chunks; each chunk is written to `.<out stem>.features-parts/part-<k>.safetensors`
and hashed into that folder's `index.json`. A re-run with the same build, dataset and selection skips the chunks
whose part still matches its hash and finishes the rest (with either suffix: the parts do not depend on the format);
the output is written to a temp sibling and renamed at the end, then the parts are removed. The safetensors file is
assembled in memory (the output's size), the parquet one streamed. `FeaturesFile` reads either format back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import torch
import typer
from rich.console import Console

from gr00t_export import __version__
from gr00t_export.errors import InputError
from gr00t_export.families.base import RawInputs
from gr00t_export.spec import GraphSpec
from gr00t_export.util import (
    TOOL_NAME,
    atomic_output_file,
    check_output_file,
    ordinary_permissions,
    progress_bar,
    refuse_overlap,
    sha256_file,
)

FEATURES_OUTPUT = "backbone_features"
METADATA_KEY = "gr00t_export.features"
KIND = "backbone-features"
PARTS_KIND = "backbone-features-parts"
FORMAT_VERSION = 1
SUFFIXES = (".safetensors", ".parquet")
TOKEN_TENSORS = ("attention_mask", "input_ids")  # per token, beside the features, when the build has them
DATASET_META = ("info.json", "episodes.jsonl", "tasks.jsonl", "modality.json")

console = Console(stderr=True)
T = TypeVar("T")


# ------------------------------------------------------------------------------------------- the backbone graph


@dataclass(frozen=True)
class BackboneGraph:
    """The stages that make `backbone_features`, and where each stored tensor is found after they ran.

    `taps` maps a stored name to (stage, input) in a `run_pipeline` trace: the mask and the token ids are read where
    a backbone stage consumes them, i.e. exactly what the action head is fed beside the features.
    """

    spec: GraphSpec  # the build's spec, cut down to the backbone stages (spec order)
    features: str  # "llm/backbone_features"
    taps: dict[str, tuple[str, str]]  # stored name -> (stage, input) that consumes it
    sources: dict[str, str]  # stored name -> the "stage/output" it is

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.spec.stages]


def backbone_graph(spec: GraphSpec, output: str = FEATURES_OUTPUT) -> BackboneGraph:
    """The producer of `output` and its transitive producers, followed through the spec's `from:` edges."""
    producers = [s for s in spec.stages if output in s.output_names]
    if len(producers) != 1:
        raise InputError(f"the build's graph has {len(producers)} stages producing {output!r}, not one; features "
                         "need a build of a GR00T family whose backbone ends in that output")
    features = f"{producers[0].name}/{output}"
    by_name = {s.name: s for s in spec.stages}
    needed, todo = set(), [producers[0].name]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += [t.source.split("/", 1)[0] for t in by_name[name].inputs if t.source != "external"]
    stages = tuple(s for s in spec.stages if s.name in needed)
    # the mask is what a consumer of the features takes as a mask beside them; the ids come from the same stage
    consumers = [s for s in spec.stages if any(t.source == features for t in s.inputs)]
    masks = [t.source for s in consumers for t in s.inputs if "mask" in t.name and t.source != "external"]
    if not masks:
        raise InputError(f"no stage of the build takes an attention mask beside {features}; features need a build "
                         "whose action head reads one")
    mask_stage = masks[0].split("/", 1)[0]
    sources = {"attention_mask": masks[0], "input_ids": f"{mask_stage}/input_ids"}
    taps = {}
    for name, source in sources.items():
        for stage in stages:
            tapped = [t.name for t in stage.inputs if t.source == source]
            if tapped:
                taps[name] = (stage.name, tapped[0])
                break
    if "attention_mask" not in taps:
        raise InputError(f"no backbone stage consumes {masks[0]}; this build's graph is not one features can read")
    return BackboneGraph(dataclasses.replace(spec, stages=stages), features, taps,
                         {name: sources[name] for name in taps})


@dataclass
class StepFeatures:
    """One dataset step's backbone output, unpadded: its own L tokens."""

    episode_index: int
    frame_index: int
    instruction: str
    features: torch.Tensor  # (L, D) in the build's dtype
    tokens: dict[str, torch.Tensor]  # attention_mask, input_ids: (L,) int64


def stack_raw(raws: Sequence[RawInputs]) -> RawInputs:
    """One batched `RawInputs` from single steps: arrays concatenated on the batch axis, string lists joined."""
    external: dict[str, Any] = {}
    for name, first in raws[0].external.items():
        values = [r.external[name] for r in raws]
        external[name] = np.concatenate(values) if isinstance(first, np.ndarray) else [x for v in values for x in v]
    return RawInputs(external, batch=sum(r.batch for r in raws), batched=True)


def instruction_of(raw: RawInputs) -> str:
    """The instruction the tokenizer stage gets for a single step (empty for a family without language)."""
    texts = raw.external.get("instructions")
    return str(texts[0]) if texts else ""


class BackboneRunner:
    """The backbone stages of an exported build, run on batches of dataset steps."""

    def __init__(self, artifact_dir: Path, device: str):
        from gr00t_export.runtime.runner import ExportedGr00tRunner

        self.runner = ExportedGr00tRunner(artifact_dir, device=device)
        self.graph = backbone_graph(self.runner.graph)
        self.no_noise = torch.empty(0)  # run_pipeline's init_actions: no backbone stage reads it

    def run(self, raws: Sequence[RawInputs], steps: Sequence[tuple[int, int]]) -> list[StepFeatures]:
        """Steps of one instruction (same prompt length, so nothing is padded) through the backbone."""
        from gr00t_export.runtime.runner import run_pipeline

        trace: dict[str, dict[str, Any]] = {}
        # the features' producer is the last backbone stage (every other one feeds it), so its outputs come back
        outputs = run_pipeline(self.graph.spec, self.runner.stages, stack_raw(raws), self.no_noise, trace)
        features = outputs[self.graph.features.split("/", 1)[1]].cpu()
        tokens = {name: torch.as_tensor(trace[stage][tensor]).cpu()
                  for name, (stage, tensor) in self.graph.taps.items()}
        return [StepFeatures(episode, frame, instruction_of(raw), features[i].clone(),
                             {name: t[i].clone() for name, t in tokens.items()})
                for i, (raw, (episode, frame)) in enumerate(zip(raws, steps, strict=True))]


# ------------------------------------------------------------------------------------------- which steps


def parse_episodes(text: str | None) -> list[int] | None:
    """"0,2,5-9" -> [0, 2, 5, 6, 7, 8, 9]; None (every episode) stays None."""
    if text is None:
        return None
    episodes: dict[int, None] = {}  # ordered, without repeats
    for part in (p.strip() for p in text.split(",")):
        first, dash, last = part.partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            raise InputError(f"--episodes {text!r} is not a list of episode indices; write e.g. 0,2,5-9") from None
        if lo < 0 or hi < lo:
            raise InputError(f"--episodes range {part!r} is empty or negative; write e.g. 0,2,5-9")
        episodes |= dict.fromkeys(range(lo, hi + 1))
    return list(episodes)


def select_steps(lengths: dict[int, int], episodes: list[int] | None, max_steps: int | None,
                 dataset: Path) -> list[tuple[int, int]]:
    """(episode, frame) of every step of the chosen episodes, in dataset order; the first `max_steps` of them."""
    chosen = sorted(lengths) if episodes is None else episodes
    missing = [e for e in chosen if e not in lengths]
    if missing:
        have = sorted(lengths)
        raise InputError(f"--episodes names {', '.join(map(str, missing))}, not in {dataset} (it has {len(have)} "
                         f"episodes: {have[0]}..{have[-1]}); pick episodes it has")
    steps = [(e, f) for e in chosen for f in range(lengths[e])]
    if not steps:
        raise InputError(f"the chosen episodes of {dataset} hold no steps; pick other episodes")
    return steps[:max_steps] if max_steps is not None else steps


# ------------------------------------------------------------------------------------------- resumable parts


def parts_dir(out: Path) -> Path:
    """Where a run writing `out` keeps its finished chunks: one folder for both suffixes, so a run can be finished
    into the other format."""
    return out.parent / f".{out.stem}.features-parts"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    ordinary_permissions(tmp)
    os.replace(tmp, path)


def _ours(data: Any, kind: str) -> bool:
    tool = data.get("tool") if isinstance(data, dict) else None
    return isinstance(tool, dict) and tool.get("name") == TOOL_NAME and data.get("kind") == kind


class PartStore:
    """A run's finished chunks, `.<out stem>.features-parts/part-<k>.safetensors` beside the output, hashed into
    `index.json` once complete. A part is trusted only while it matches its hash; a part of an interrupted write
    or one the index never recorded is recomputed."""

    def __init__(self, out: Path, identity: dict[str, Any]):
        self.dir = parts_dir(out)
        self.index_path = self.dir / "index.json"
        self.identity = identity
        self.parts: dict[str, dict[str, Any]] = {}

    def open(self, log: Callable[[str], None]) -> set[int]:
        """The chunks already done (verified); a store of another run (other build, dataset or selection) is
        discarded, since its parts cannot be reused."""
        if self.dir.exists():
            try:
                index = json.loads(self.index_path.read_text())
            except (OSError, ValueError):
                index = None
            if not _ours(index, PARTS_KIND):
                raise InputError(f"{self.dir} exists and was not written by gr00t-export features; move it away or "
                                 "choose another --out (nothing was changed)")
            if index.get("identity") != self.identity:
                log(f"discarding the parts of an earlier run with other inputs in {self.dir}")
                shutil.rmtree(self.dir)
            else:
                self.parts = dict(index.get("parts", {}))
        self.dir.mkdir(parents=True, exist_ok=True)
        for chunk, entry in list(self.parts.items()):
            path = self.dir / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
                log(f"chunk {chunk}: part {path.name} is missing or does not match its hash; computing it again")
                del self.parts[chunk]
        kept = {entry["file"] for entry in self.parts.values()} | {self.index_path.name}
        for stray in self.dir.iterdir():  # temp files of an interrupted write, parts the index never recorded
            if stray.name not in kept:
                stray.unlink()
        self._save()
        return {int(c) for c in self.parts}

    def _save(self) -> None:
        _write_json(self.index_path, {"tool": {"name": TOOL_NAME, "version": __version__}, "kind": PARTS_KIND,
                                      "identity": self.identity, "parts": self.parts})

    def write(self, chunk: int, records: Sequence[StepFeatures], device: str) -> None:
        from safetensors.torch import save_file

        name = f"part-{chunk:05d}.safetensors"
        lengths = [r.features.shape[0] for r in records]
        tensors = {"features": torch.cat([r.features for r in records]),
                   "token_offsets": torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int64),
                   "episode_index": torch.tensor([r.episode_index for r in records], dtype=torch.int64),
                   "frame_index": torch.tensor([r.frame_index for r in records], dtype=torch.int64)}
        for token in records[0].tokens:
            tensors[token] = torch.cat([r.tokens[token] for r in records]).to(torch.int64)
        tmp = self.dir / f".{name}.tmp-{os.getpid()}"
        save_file(tensors, str(tmp), metadata={"instructions": json.dumps([r.instruction for r in records])})
        ordinary_permissions(tmp)
        os.replace(tmp, self.dir / name)
        self.parts[str(chunk)] = {"file": name, "sha256": sha256_file(self.dir / name),
                                  "size": (self.dir / name).stat().st_size, "steps": len(records),
                                  "tokens": int(sum(lengths)), "device": device,
                                  "dtype": str(tensors["features"].dtype).removeprefix("torch."),
                                  "dim": int(tensors["features"].shape[1])}
        self._save()

    def load(self, chunk: int) -> tuple[dict[str, torch.Tensor], list[str]]:
        """A finished chunk's tensors and per-step instructions, checked against its hash once more."""
        from safetensors import safe_open

        entry = self.parts[str(chunk)]
        path = self.dir / entry["file"]
        if sha256_file(path) != entry["sha256"]:
            raise InputError(f"part {path} changed while the run was writing its output; re-run to recompute it")
        with safe_open(str(path), "pt") as part:
            return {k: part.get_tensor(k) for k in part.keys()}, json.loads(part.metadata()["instructions"])

    def devices(self) -> list[str]:
        return sorted({entry["device"] for entry in self.parts.values()})

    def features_bytes(self) -> int:
        return sum(e["tokens"] * e["dim"] * torch.empty(0, dtype=getattr(torch, e["dtype"])).element_size()
                   for e in self.parts.values())

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def dataset_identity(dataset: Path) -> dict[str, str]:
    """The dataset's meta files' hashes: a resumed run must read the same episodes and tasks."""
    return {name: sha256_file(dataset / "meta" / name) for name in DATASET_META}


# ------------------------------------------------------------------------------------------- final files


def is_features_file(path: Path) -> bool:
    """Whether `path` is a features file gr00t-export wrote (the only kind of file `features` replaces)."""
    try:
        return _ours(read_metadata(path), KIND)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not ours
        return False


def read_metadata(path: Path) -> dict[str, Any]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {})[METADATA_KEY.encode()]
    else:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {})[METADATA_KEY]
    return json.loads(raw)


def _write_safetensors(store: PartStore, chunks: int, metadata: dict[str, Any], tmp: Path) -> None:
    """One file of ragged tensors; the chunks are copied into preallocated tensors one part at a time."""
    from safetensors.torch import save_file

    entries = [store.parts[str(c)] for c in range(chunks)]
    steps, tokens = sum(e["steps"] for e in entries), sum(e["tokens"] for e in entries)
    out: dict[str, torch.Tensor] = {}
    instructions: list[str] = []
    lookup: dict[str, int] = {}
    step0 = token0 = 0
    for chunk in range(chunks):
        part, texts = store.load(chunk)
        if not out:
            out["features"] = torch.empty((tokens, part["features"].shape[1]), dtype=part["features"].dtype)
            out |= {name: torch.empty(tokens, dtype=torch.int64) for name in TOKEN_TENSORS if name in part}
            out |= {name: torch.empty(steps, dtype=torch.int64)
                    for name in ("episode_index", "frame_index", "instruction_index")}
            out["token_offsets"] = torch.empty(steps + 1, dtype=torch.int64)
            out["token_offsets"][0] = 0
        n, length = len(texts), part["features"].shape[0]
        out["features"][token0:token0 + length] = part["features"]
        for name in TOKEN_TENSORS:
            if name in out:
                out[name][token0:token0 + length] = part[name]
        for name in ("episode_index", "frame_index"):
            out[name][step0:step0 + n] = part[name]
        out["instruction_index"][step0:step0 + n] = torch.tensor([lookup.setdefault(t, len(lookup)) for t in texts])
        out["token_offsets"][step0 + 1:step0 + n + 1] = part["token_offsets"][1:] + token0
        step0, token0 = step0 + n, token0 + length
    instructions = list(lookup)
    save_file(out, str(tmp), metadata={METADATA_KEY: json.dumps(metadata | {"instructions": instructions})})


def _arrow_features(features: torch.Tensor, offsets: torch.Tensor):
    """(sum L, D) rows and step offsets as list<fixed_size_list<D>>; bf16 (which Arrow lacks) as uint16 bits."""
    import pyarrow as pa

    values = features.view(torch.int16).numpy().view(np.uint16) if features.dtype == torch.bfloat16 \
        else features.numpy()
    rows = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), features.shape[1])
    return pa.ListArray.from_arrays(pa.array(offsets.numpy().astype(np.int32)), rows)


def _write_parquet(store: PartStore, chunks: int, metadata: dict[str, Any], tmp: Path) -> None:
    """One row per step, one row group per chunk, written as the parts are read (memory: one chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    try:
        for chunk in range(chunks):
            part, texts = store.load(chunk)
            offsets = part["token_offsets"]
            columns = {"episode_index": pa.array(part["episode_index"].numpy()),
                       "frame_index": pa.array(part["frame_index"].numpy()),
                       "instruction": pa.array(texts, pa.string()),
                       "features": _arrow_features(part["features"], offsets)}
            for name in TOKEN_TENSORS:
                if name in part:
                    columns[name] = pa.ListArray.from_arrays(pa.array(offsets.numpy().astype(np.int32)),
                                                             pa.array(part[name].numpy()))
            table = pa.table(columns)
            if writer is None:
                schema = table.schema.with_metadata({METADATA_KEY: json.dumps(metadata)})
                # dictionary encoding and statistics of the feature values cost 5x on every read and save nothing
                writer = pq.ParquetWriter(str(tmp), schema, use_dictionary=["instruction"],
                                          write_statistics=["episode_index", "frame_index"])
            writer.write_table(table.cast(writer.schema), row_group_size=len(texts))
    finally:
        if writer is not None:
            writer.close()


# ------------------------------------------------------------------------------------------- reading back


class FeaturesFile:
    """A file `gr00t-export features` wrote (either format), one `StepFeatures` per dataset step.

    Random access: `file[i]`; the safetensors format reads only step i's rows (memory-mapped slices), the parquet
    one decodes the row group (chunk) that holds it and keeps the last `cached_groups` decoded, so shuffled access
    is fast on safetensors and on parquet files of up to that many chunks. Iterating walks the steps in order.
    """

    def __init__(self, path: str | Path, cached_groups: int = 8):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"features file {self.path} does not exist; write it with `gr00t-export features`")
        if not is_features_file(self.path):
            raise InputError(f"{self.path} is not a features file written by gr00t-export; point at one")
        self.metadata = read_metadata(self.path)
        if self.path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetFile(self.path)
            index = self._parquet.read(columns=["episode_index", "frame_index", "instruction"])
            self.episode_index = index.column("episode_index").to_numpy()
            self.frame_index = index.column("frame_index").to_numpy()
            self.instructions = index.column("instruction").to_pylist()
            sizes = [self._parquet.metadata.row_group(g).num_rows for g in range(self._parquet.num_row_groups)]
            self._group_starts = np.concatenate([[0], np.cumsum(sizes)])
            self._groups: OrderedDict[int, dict[str, Any]] = OrderedDict()
            self._cached_groups = max(1, cached_groups)
        else:
            from safetensors import safe_open

            self._st = safe_open(str(self.path), "pt")
            self.episode_index = self._st.get_tensor("episode_index").numpy()
            self.frame_index = self._st.get_tensor("frame_index").numpy()
            texts = self.metadata["instructions"]
            self.instructions = [texts[i] for i in self._st.get_tensor("instruction_index").tolist()]
            self._offsets = self._st.get_tensor("token_offsets").tolist()
        self.token_names = [n for n in TOKEN_TENSORS if n in self.metadata.get("tokens", {})]

    def __len__(self) -> int:
        return len(self.episode_index)

    def __iter__(self) -> Iterator[StepFeatures]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> StepFeatures:
        if not -len(self) <= i < len(self):
            raise IndexError(f"step {i} of a features file of {len(self)} steps")
        i %= len(self)
        if self.path.suffix == ".parquet":
            features, tokens = self._parquet_row(i)
        else:
            start, end = self._offsets[i], self._offsets[i + 1]
            features = self._st.get_slice("features")[start:end]
            tokens = {n: self._st.get_slice(n)[start:end] for n in self.token_names}
        return StepFeatures(int(self.episode_index[i]), int(self.frame_index[i]), self.instructions[i], features,
                            tokens)

    def _parquet_row(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        group = int(np.searchsorted(self._group_starts, i, side="right") - 1)
        if group in self._groups:
            self._groups.move_to_end(group)
        else:
            table = self._parquet.read_row_group(group, columns=["features", *self.token_names])
            column = table.column("features").combine_chunks()
            flat = column.values.values.to_numpy(zero_copy_only=False)
            rows = torch.from_numpy(flat.reshape(-1, column.type.value_type.list_size).copy())
            if self.metadata["dtype"] == "bfloat16":
                rows = rows.view(torch.bfloat16)
            decoded = {"offsets": column.offsets.to_numpy(), "features": rows,
                       **{n: torch.from_numpy(table.column(n).combine_chunks().values.to_numpy().copy())
                          for n in self.token_names}}
            self._groups[group] = decoded
            while len(self._groups) > self._cached_groups:
                self._groups.popitem(last=False)
        decoded = self._groups[group]
        local = i - int(self._group_starts[group])
        start, end = int(decoded["offsets"][local]), int(decoded["offsets"][local + 1])
        return decoded["features"][start:end], {n: decoded[n][start:end] for n in self.token_names}


# ------------------------------------------------------------------------------------------- the run


@dataclass
class FeaturesOptions:
    artifact_dir: Path
    dataset_path: Path
    out: Path  # .safetensors or .parquet
    episodes: list[int] | None = None  # None: every episode
    max_steps: int | None = None  # the first N steps of the selection (short device runs)
    batch_size: int = 8
    chunk_steps: int = 256  # steps per resumable part
    device: str | None = None  # None: cuda when a GPU is visible, else cpu
    time_limit: float | None = None  # seconds: stop after the chunk during which they pass; a re-run continues
    show_progress: bool = True


@dataclass
class FeaturesResult:
    out: Path | None  # None: stopped at the time limit, the finished chunks kept for a re-run
    parts_dir: Path
    num_steps: int
    chunks: int
    chunks_done: int
    chunks_resumed: int  # found finished (and verified) from an earlier run
    computed_steps: int  # this run
    compute_seconds: float  # wall time of this run's chunks (reading, backbone, writing parts)
    backbone_seconds: float  # of which in the backbone stages: what the device could do if reading kept up
    device: str

    @property
    def steps_per_second(self) -> float:
        return self.computed_steps / self.compute_seconds if self.compute_seconds > 0 else 0.0

    @property
    def backbone_steps_per_second(self) -> float:
        return self.computed_steps / self.backbone_seconds if self.backbone_seconds > 0 else 0.0


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where the system does not say)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory_for(features_bytes: int, out: Path) -> None:
    """A .safetensors output is assembled in memory: refuse one larger than the free memory before trying."""
    free = available_memory()
    if free is not None and features_bytes > 0.8 * free:
        raise InputError(f"the features take {features_bytes / 2**30:.1f} GiB, more than a .safetensors file can be "
                         f"assembled in ({free / 2**30:.1f} GiB free); re-run with --out "
                         f"{out.with_suffix('.parquet')} (streamed; the finished chunks are reused)")


def _check_options(opts: FeaturesOptions) -> str:
    if opts.out.suffix not in SUFFIXES:
        raise InputError(f"--out {opts.out} must end in .safetensors or .parquet (the file format); rename it")
    for name, value in (("--batch_size", opts.batch_size), ("--chunk_steps", opts.chunk_steps),
                        ("--max_steps", opts.max_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    if opts.time_limit is not None and opts.time_limit < 0:
        raise InputError(f"--time_limit must be >= 0 seconds, got {opts.time_limit}")
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
    if not device.startswith(("cuda", "cpu")):
        raise InputError(f"--device {device!r} is not cpu or cuda[:N]; pick one of those")
    return device


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items` produced on a background thread, up to `depth` ahead, so decoding video overlaps the backbone's
    work; an error in the producer is raised here, and closing the iterator stops the producer."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            put(_Failed(err))

    worker = threading.Thread(target=produce, name="features-reader", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


class ChunkWork:
    """The chunks still to do: steps read on a background thread, batched per instruction, each chunk written as a
    part once all its steps are back."""

    def __init__(self, backbone: BackboneRunner, store: PartStore, chunks: list[list[tuple[int, int]]],
                 batch_size: int, device: str, advance: Callable[[int], None]):
        self.backbone, self.store, self.chunks = backbone, store, chunks
        self.batch_size, self.device, self.advance = batch_size, device, advance
        self.computed, self.backbone_seconds, self.started = 0, 0.0, time.perf_counter()

    def run(self, dataset: Any, todo: list[int], deadline: float | None) -> bool:
        """Computes the `todo` chunks in order; True when it stopped at `deadline` with chunks left."""
        reader, interface = self.backbone.runner.reader, self.backbone.runner.interface

        def load() -> Iterator[tuple[int, int, tuple[int, int], RawInputs]]:
            for chunk in todo:
                for pos, (episode, frame) in enumerate(self.chunks[chunk]):
                    yield chunk, pos, (episode, frame), reader(dataset.observation(episode, frame, interface))

        self.started = time.perf_counter()
        records: list[StepFeatures | None] = []
        pending: dict[str, list[tuple[int, tuple[int, int], RawInputs]]] = {}
        received = 0
        for chunk, pos, step, raw in prefetched(load(), depth=2 * self.batch_size):
            if pos == 0:
                records, received = [None] * len(self.chunks[chunk]), 0
            batch = pending.setdefault(instruction_of(raw), [])
            batch.append((pos, step, raw))
            if len(batch) == self.batch_size:
                self._run(pending.pop(instruction_of(raw)), records)
            received += 1
            if received == len(self.chunks[chunk]):
                for key in list(pending):
                    self._run(pending.pop(key), records)
                self.store.write(chunk, records, self.device)  # type: ignore[arg-type]  # every position is filled
                if deadline is not None and time.perf_counter() >= deadline and chunk != todo[-1]:
                    return True
        return False

    def _run(self, batch: list[tuple[int, tuple[int, int], RawInputs]], records: list[StepFeatures | None]) -> None:
        clock = time.perf_counter()
        for (pos, _, _), record in zip(batch, self.backbone.run([b[2] for b in batch], [b[1] for b in batch]),
                                       strict=True):
            records[pos] = record
        self.backbone_seconds += time.perf_counter() - clock
        self.computed += len(batch)
        self.advance(len(batch))


def file_metadata(backbone: BackboneRunner, store: PartStore, identity: dict[str, Any], max_steps: int | None
                  ) -> dict[str, Any]:
    """What a features file says about itself: the build (seal, source fingerprint), dataset, steps and stages."""
    manifest, graph, first = backbone.runner.manifest, backbone.graph, store.parts["0"]
    return {
        "format_version": FORMAT_VERSION, "tool": {"name": TOOL_NAME, "version": __version__}, "kind": KIND,
        "build": {"artifact_dir": str(backbone.runner.dir.expanduser().resolve()),
                  "manifest_sha256": manifest.get("manifest_sha256"), "family": manifest.family,
                  "precision": manifest.precision,
                  "source_fingerprint_sha256": manifest.get("source", {}).get("fingerprint_sha256")},
        "interface": backbone.runner.interface.to_dict(),
        "dataset": {"path": identity["dataset"], "meta_sha256": identity["dataset_meta_sha256"]},
        "episodes": identity["episodes"], "num_steps": identity["num_steps"], "max_steps": max_steps,
        "stages": graph.stage_names, "features": graph.features, "tokens": graph.sources,
        "dtype": first["dtype"], "dim": first["dim"], "devices": store.devices(),
        "layout": "one record per step, unpadded: its own L tokens (L varies with the instruction)",
    }


def extract_features(opts: FeaturesOptions, log: Callable[[str], None] = lambda m: console.print(m)
                     ) -> FeaturesResult:
    """Every selected step through the build's backbone into `opts.out`, resuming an interrupted run's parts."""
    from gr00t_export.data.lerobot import LeRobotDataset

    start = time.perf_counter()
    device = _check_options(opts)
    out = Path(opts.out).expanduser()
    inputs = {"ARTIFACT_DIR": opts.artifact_dir, "--dataset_path": opts.dataset_path}
    check_output_file(out, inputs, ours=is_features_file, what="--out")
    refuse_overlap(parts_dir(out), inputs, label="--out's parts dir")
    backbone = BackboneRunner(Path(opts.artifact_dir), device)
    manifest, interface = backbone.runner.manifest, backbone.runner.interface
    dataset = LeRobotDataset(opts.dataset_path)
    dataset.check_config(interface)
    steps = select_steps(dataset.episode_lengths, opts.episodes, opts.max_steps, Path(opts.dataset_path))
    chunks = [steps[i:i + opts.chunk_steps] for i in range(0, len(steps), opts.chunk_steps)]
    dataset_dir = Path(opts.dataset_path).expanduser().resolve()
    identity = {"format_version": FORMAT_VERSION, "manifest_sha256": manifest.get("manifest_sha256"),
                "dataset": str(dataset_dir), "dataset_meta_sha256": dataset_identity(dataset_dir),
                "episodes": list(dict.fromkeys(e for e, _ in steps)), "num_steps": len(steps),
                "chunk_steps": opts.chunk_steps,
                "stages": backbone.graph.stage_names}
    store = PartStore(out, identity)
    done = store.open(log)
    resumed = len(done)
    if resumed:
        log(f"resuming: {resumed} of {len(chunks)} chunks already done in {store.dir}")
    deadline = None if opts.time_limit is None else start + opts.time_limit
    with progress_bar("features", len(steps), enabled=opts.show_progress) as advance:
        advance(sum(len(chunks[c]) for c in done))
        work = ChunkWork(backbone, store, chunks, opts.batch_size, device, advance)
        stopped = work.run(dataset, [c for c in range(len(chunks)) if c not in done], deadline)
    result = FeaturesResult(None, store.dir, len(steps), len(chunks), len(store.parts), resumed, work.computed,
                            time.perf_counter() - work.started, work.backbone_seconds, device)
    if stopped:
        return result
    if out.suffix == ".safetensors":
        check_memory_for(store.features_bytes(), out)
    metadata = file_metadata(backbone, store, identity, opts.max_steps)
    writer = _write_parquet if out.suffix == ".parquet" else _write_safetensors
    with atomic_output_file(out, inputs, ours=is_features_file, what="--out") as tmp:
        writer(store, len(chunks), metadata, tmp)
    store.remove()
    result.out = out
    return result


# ------------------------------------------------------------------------------------------- the command


def features_cmd(
    artifact_dir: Annotated[Path, typer.Argument(help="Exported build (the --output of `build`).")],
    dataset_path: Annotated[Path, typer.Option("--dataset_path", help="LeRobot v2 dataset whose steps are run.")],
    out: Annotated[Path, typer.Option("--out", help="Output file: .safetensors (ragged tensors, one file) or "
                                      ".parquet (one row per step, streamed).")],
    episodes: Annotated[str | None, typer.Option(help="Episodes to read, e.g. 0,2,5-9.",
                                                 show_default="every episode")] = None,
    max_steps: Annotated[int | None, typer.Option("--max_steps", help="Only the first N steps of the selection "
                                                  "(a short run).", show_default="every step")] = None,
    batch_size: Annotated[int, typer.Option("--batch_size", help="Steps per backbone call (steps of one "
                                            "instruction are batched together, so nothing is padded).")] = 8,
    chunk_steps: Annotated[int, typer.Option("--chunk_steps", help="Steps per resumable part: an interrupted run "
                                             "redoes at most one chunk.")] = 256,
    device: Annotated[str | None, typer.Option(help="cuda or cpu.",
                                               show_default="cuda when a GPU is visible, else cpu")] = None,
    time_limit: Annotated[float | None, typer.Option("--time_limit", help="Stop after the chunk during which "
                                                     "this many seconds have passed; the same command continues "
                                                     "(for time-boxed machines).")] = None,
):
    """Backbone features (vit + llm of an exported build) of every step of a LeRobot dataset, batched and resumable.

    Each step is stored unpadded with its attention mask and token ids; `gr00t_export.tools.features.FeaturesFile`
    reads either format back. Re-running an interrupted command continues from its last finished chunk.
    """
    options = FeaturesOptions(artifact_dir=artifact_dir, dataset_path=dataset_path, out=out,
                              episodes=parse_episodes(episodes), max_steps=max_steps, batch_size=batch_size,
                              chunk_steps=chunk_steps, device=device, time_limit=time_limit)
    result = extract_features(options)
    rate = (f"{result.steps_per_second:.2f} steps/s on {result.device}, the backbone alone "
            f"{result.backbone_steps_per_second:.2f}" if result.computed_steps else "nothing new computed")
    if result.out is None:
        console.print(f"stopped at --time_limit after {result.chunks_done} of {result.chunks} chunks ({rate}); "
                      f"run the same command again to continue (finished chunks are in {result.parts_dir})",
                      highlight=False, soft_wrap=True)
        return
    size = result.out.stat().st_size / 2**20
    console.print(f"[green]wrote[/] {result.out} ({result.num_steps} steps, {size:.1f} MiB; {rate}"
                  f"{f', {result.chunks_resumed} chunks resumed' if result.chunks_resumed else ''})",
                  highlight=False, soft_wrap=True)
