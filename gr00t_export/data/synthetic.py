"""Small synthetic LeRobot v2 datasets, so the reader and every later stage can be tested anywhere.

Trajectories are seeded sinusoids per joint; rotation keys hold a smooth rotation in the layout's
representation (meta/modality.json `rotation_type`), binary keys 0/1. Each video frame draws a planar arm
whose joint angles are the first state values and a gripper blob whose colour follows the hands, so frames
change with the state and an encoder sees real content; cameras may differ in resolution. The same seed gives
the same parquet contents and the same decoded frames (x264 runs single-threaded: its bitstream depends on
the thread count).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gr00t_export.data.rotation import convert
from gr00t_export.errors import InputError
from gr00t_export.families.base import KeyLayout
from gr00t_export.util import atomic_output_dir, file_input, ordinary_permissions

if TYPE_CHECKING:
    from gr00t_export.families.base import ObservationKeys

    class DatasetKeys(ObservationKeys, Protocol):
        """A policy's keys plus how a dataset stores each (N1.5's data configs and `PolicyInterface` both fit)."""

        name: str
        joint_names: dict[str, tuple[str, ...]]

        def key_layouts(self) -> dict[str, KeyLayout]: ...

DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
CHUNKS_SIZE = 1000

TASKS = (
    "pick the red cube from the table and place it in the bowl",
    "stack the green block on the blue block",
    "open the drawer and put the sponge inside",
    "push the yellow ball to the left side of the table",
)

def video_codec() -> str:
    """h264 through libx264 when this PyAV wheel has the encoder, otherwise mpeg4 (always built in)."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _layout(keys: tuple[str, ...], layouts: dict[str, KeyLayout]) -> dict[str, tuple[int, int]]:
    """[start, end) of each key in the concatenated column, in the config's concat order."""
    out: dict[str, tuple[int, int]] = {}
    start = 0
    for key in keys:
        end = start + layouts[key].dim
        out[key.split(".", 1)[1]] = (start, end)
        start = end
    return out


def _trajectory(rng: np.random.Generator, layout: KeyLayout, times: np.ndarray) -> np.ndarray:
    """(len(times), dim) values of one key: joints, a rotation in its representation, or a 0/1 switch."""
    if not layout.continuous:
        period = rng.uniform(0.5, 1.5)
        phase = rng.uniform(0.0, period)
        return np.repeat((((times + phase) % period) < period / 2).astype(np.float64)[:, None], layout.dim, 1)
    if layout.rotation_type is not None:
        # a smooth rotation vector (big for absolute poses, small for per-step deltas), then its representation
        scale = 1.0 if layout.absolute else 0.1
        rotvec = scale * _sinusoids(rng, 3, times)
        return convert(rotvec, "axis_angle", layout.rotation_type)
    return _sinusoids(rng, layout.dim, times)


def _sinusoids(rng: np.random.Generator, dims: int, times: np.ndarray) -> np.ndarray:
    """(len(times), dims) smooth joint trajectories: offset + amp * sin(2*pi*f*t + phase)."""
    offset = rng.uniform(-0.5, 0.5, dims)
    amp = rng.uniform(0.2, 0.8, dims)
    freq = rng.uniform(0.1, 0.5, dims)
    phase = rng.uniform(0.0, 2 * np.pi, dims)
    return offset + amp * np.sin(2 * np.pi * freq * times[:, None] + phase)


def render_frame(state: np.ndarray, image_size: int | tuple[int, int], view: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 picture of the state (`image_size` S or (H, W)): a 3-link planar arm plus a gripper blob.

    The first three state values are the link angles; the mean of the rest sets the blob colour, so
    consecutive frames differ the way the trajectory does. ``view`` shifts the palette per camera.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    s = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base_colour = np.array([40 + 50 * view, 70, 110 - 30 * view], dtype=np.float32) % 256
    img = base_colour + (yy[..., None] / s) * np.array([60, 60, 40], dtype=np.float32)
    checker = ((xx // max(s // 16, 1) + yy // max(s // 16, 1)) % 2)[..., None]
    img = img + 12 * checker
    img[int(0.8 * height) :, :] = np.array([120, 95, 70], dtype=np.float32)  # table top

    angles = np.zeros(3)
    angles[: min(3, len(state))] = state[:3]
    rest = state[3:] if len(state) > 3 else state
    grip = float(np.clip(0.5 + 0.5 * np.tanh(rest.mean()), 0.0, 1.0)) if len(rest) else 0.5

    def disc(cx: float, cy: float, r: float, colour: tuple[float, float, float]) -> None:
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, height)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, width)
        if y0 >= y1 or x0 >= x1:
            return
        mask = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2 <= r * r
        img[y0:y1, x0:x1][mask] = colour

    x, y, heading = 0.5 * width, 0.85 * height, -np.pi / 2
    link = 0.22 * s
    for i, angle in enumerate(angles):
        heading += float(angle)
        nx, ny = x + link * np.cos(heading), y + link * np.sin(heading)
        for f in np.linspace(0.0, 1.0, 12):
            disc(x + f * (nx - x), y + f * (ny - y), 0.035 * s, (200.0, 200.0 - 50 * i, 60.0 + 60 * i))
        x, y = nx, ny
    disc(x, y, 0.06 * s, (255.0 * grip, 255.0 * (1 - grip), 90.0))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_video(path: Path, frames: np.ndarray, fps: float, codec: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "16", "preset": "medium"}
        else:
            stream.bit_rate = 8_000_000
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _stats(values: np.ndarray) -> dict[str, list[float]]:
    """LeRobot stats.json entry: per-dimension mean/std/min/max/q01/q99 as lists."""
    v = values.reshape(len(values), -1).astype(np.float64)
    return {
        "mean": v.mean(axis=0).tolist(),
        "std": v.std(axis=0).tolist(),
        "min": v.min(axis=0).tolist(),
        "max": v.max(axis=0).tolist(),
        "q01": np.quantile(v, 0.01, axis=0).tolist(),
        "q99": np.quantile(v, 0.99, axis=0).tolist(),
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_dataset(
    out_dir: str | Path,
    cfg: DatasetKeys,
    num_episodes: int = 2,
    episode_length: int = 48,
    image_size: int = 256,
    fps: float = 20,
    seed: int = 0,
    image_sizes: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """Write a LeRobot v2 dataset serving every key of ``cfg`` to ``out_dir`` and return its path.

    Cameras are ``image_size`` squares unless ``image_sizes`` gives a video key its own (height, width).

    Built in a temp folder beside ``out_dir`` and renamed at the end, so a crash never leaves a
    half-written dataset that looks complete.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise InputError(f"{out_dir} already exists; remove it or pick another output folder")
    sizes = {key: tuple((image_sizes or {}).get(key, (image_size, image_size))) for key in cfg.video_keys}
    if num_episodes < 1 or episode_length < 2 or min((min(hw) for hw in sizes.values()), default=16) < 16 or fps <= 0:
        raise InputError(
            f"num_episodes={num_episodes}, episode_length={episode_length}, image sizes {sorted(set(sizes.values()))}, "
            f"fps={fps} are out of range; use num_episodes>=1, episode_length>=2, images >= 16 px, fps>0"
        )
    codec = video_codec()
    layouts = cfg.key_layouts()
    state_layout = _layout(cfg.state_keys, layouts)
    action_layout = _layout(cfg.action_keys, layouts)
    state_dim = max((end for _, end in state_layout.values()), default=0)
    action_dim = max((end for _, end in action_layout.values()), default=0)
    lang_col = cfg.language_key
    views = [key.split(".", 1)[1] for key in cfg.video_keys]
    view_sizes = [sizes[key] for key in cfg.video_keys]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "meta").mkdir()
        task_texts: list[str] = []
        episodes_meta: list[dict[str, Any]] = []
        all_columns: dict[str, list[np.ndarray]] = {}
        global_index = 0
        for episode in range(num_episodes):
            rng = np.random.default_rng([seed, episode])
            times = np.arange(episode_length + 1, dtype=np.float64) / fps
            # One trajectory per short key and layout, shared by state.<k> and action.<k> when they are laid out
            # alike; action(t) = state(t + 1).
            traj: dict[tuple[str, KeyLayout], np.ndarray] = {}
            for key in (*cfg.state_keys, *cfg.action_keys):
                ident = (key.split(".", 1)[1], layouts[key])
                if ident not in traj:
                    traj[ident] = _trajectory(rng, layouts[key], times)
            state = np.zeros((episode_length, state_dim))
            for key in cfg.state_keys:
                start, end = state_layout[key.split(".", 1)[1]]
                state[:, start:end] = traj[(key.split(".", 1)[1], layouts[key])][:-1]
            action = np.zeros((episode_length, action_dim))
            for key in cfg.action_keys:
                start, end = action_layout[key.split(".", 1)[1]]
                action[:, start:end] = traj[(key.split(".", 1)[1], layouts[key])][1:]

            task = TASKS[(seed + episode) % len(TASKS)]
            if task not in task_texts:
                task_texts.append(task)
            task_index = task_texts.index(task)
            columns: dict[str, np.ndarray] = {
                "observation.state": state,
                "action": action,
                "timestamp": times[:-1],
                "frame_index": np.arange(episode_length, dtype=np.int64),
                "episode_index": np.full(episode_length, episode, dtype=np.int64),
                "index": np.arange(global_index, global_index + episode_length, dtype=np.int64),
                "task_index": np.full(episode_length, task_index, dtype=np.int64),
            }
            if lang_col is not None:
                columns[lang_col] = np.full(episode_length, task_index, dtype=np.int64)
            global_index += episode_length
            table = pa.table(
                {
                    name: pa.array(list(values)) if values.ndim == 2 else pa.array(values)
                    for name, values in columns.items()
                }
            )
            data_file = tmp / DATA_PATH.format(episode_chunk=episode // CHUNKS_SIZE, episode_index=episode)
            data_file.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, data_file)
            for name, values in columns.items():
                all_columns.setdefault(name, []).append(values)

            # The camera sees the state: render from the concatenated state vector.
            picture_source = state if state_dim else action
            for view_index, view in enumerate(views):
                frames = np.stack([render_frame(row, view_sizes[view_index], view_index) for row in picture_source])
                video_file = tmp / VIDEO_PATH.format(
                    episode_chunk=episode // CHUNKS_SIZE,
                    episode_index=episode,
                    video_key=f"observation.images.{view}",
                )
                _write_video(video_file, frames, fps, codec)
            episodes_meta.append({"episode_index": episode, "tasks": [task], "length": episode_length})

        def vector_feature(dim: int, layout: dict[str, tuple[int, int]], prefix: str) -> dict[str, Any]:
            names: list[str] = []
            for short, (start, end) in layout.items():
                given = cfg.joint_names.get(f"{prefix}.{short}")
                names += list(given) if given else [f"{short}_{i}" for i in range(end - start)]
            return {"dtype": "float64", "shape": [dim], "names": names}

        scalar = {"shape": [1]}
        features: dict[str, Any] = {
            f"observation.images.{view}": {
                "dtype": "video",
                "shape": [*view_sizes[views.index(view)], 3],
                "names": ["height", "width", "channel"],
                "video_info": {
                    "video.fps": float(fps),
                    "video.codec": "h264" if codec == "libx264" else codec,
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "has_audio": False,
                },
            }
            for view in views
        }
        features["observation.state"] = vector_feature(state_dim, state_layout, "state")
        features["action"] = vector_feature(action_dim, action_layout, "action")
        features["timestamp"] = {"dtype": "float64", **scalar}
        for name in ("frame_index", "episode_index", "index", "task_index"):
            features[name] = {"dtype": "int64", **scalar}
        if lang_col is not None:
            features[lang_col] = {"dtype": "int64", **scalar}

        total_frames = num_episodes * episode_length
        info = {
            "codebase_version": "v2.0",
            "robot_type": cfg.name,
            "total_episodes": num_episodes,
            "total_frames": total_frames,
            "total_tasks": len(task_texts),
            "total_videos": num_episodes * len(views),
            "total_chunks": (num_episodes - 1) // CHUNKS_SIZE + 1,
            "chunks_size": CHUNKS_SIZE,
            "fps": float(fps),
            "splits": {"train": f"0:{num_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": features,
        }
        def entry(key: str, start: int, end: int) -> dict[str, Any]:
            """modality.json fields as N1.5 reads them: rotation_type, absolute (default true), dtype."""
            layout, out = layouts[key], {"start": start, "end": end}
            if layout.rotation_type is not None:
                out["rotation_type"] = layout.rotation_type
            if not layout.absolute:
                out["absolute"] = False
            if not layout.continuous:
                out |= {"dtype": "int64", "range": [0, 1]}
            return out

        modality: dict[str, Any] = {
            "state": {k.split(".", 1)[1]: entry(k, *state_layout[k.split(".", 1)[1]]) for k in cfg.state_keys},
            "action": {k.split(".", 1)[1]: entry(k, *action_layout[k.split(".", 1)[1]]) for k in cfg.action_keys},
            "video": {view: {"original_key": f"observation.images.{view}"} for view in views},
            "annotation": {lang_col.split(".", 1)[1]: {}} if lang_col is not None else {},
        }
        stats = {name: _stats(np.concatenate(parts)) for name, parts in all_columns.items()}
        _write_json(tmp / "meta" / "info.json", info)
        _write_json(tmp / "meta" / "modality.json", modality)
        _write_json(tmp / "meta" / "stats.json", stats)
        _write_jsonl(tmp / "meta" / "episodes.jsonl", episodes_meta)
        tasks_rows = [{"task_index": i, "task": t} for i, t in enumerate(task_texts)]
        _write_jsonl(tmp / "meta" / "tasks.jsonl", tasks_rows)
        ordinary_permissions(tmp)  # mkdtemp made it 0700; every file and dir as the umask says
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def write_dataset(out: Path, modality_config: str, episodes: int = 2, length: int = 48, seed: int = 0,
                  force: bool = False):
    """`make_dataset` into `out`, all or nothing, marked as gr00t-export's (so --force may replace it later);
    returns the data config written."""
    from gr00t_export.families import data_config  # families build on data/: imported when called

    cfg = data_config(modality_config)
    inputs = {"--modality_config": file_input(modality_config)}
    with atomic_output_dir(out, force=force, inputs=inputs, kind="dataset") as tmp:
        make_dataset(tmp / "dataset", cfg, num_episodes=episodes, episode_length=length, seed=seed)
        for item in (tmp / "dataset").iterdir():
            item.rename(tmp / item.name)
        (tmp / "dataset").rmdir()
    return cfg
