"""Helpers of the hand-wave example: the unitree_g1_v2 modality config and a synthetic `g1_wave` dataset.

The dataset is generated on first run (never committed): `make_dataset` lays out a LeRobot v2 dataset for the
config, then its trajectories, videos, tasks and statistics are replaced by waving motions, so the
normalisation statistics and the frames the camera "sees" both follow the wave.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gr00t_export.data.synthetic import DATA_PATH, VIDEO_PATH, make_dataset, video_codec
from gr00t_export.families.n1_5.embodiments import ModalityConfig, load_modality_config

HERE = Path(__file__).resolve().parent
CONFIG_PATH = HERE / "unitree_g1_v2.yaml"
WAVE_TASKS = ("wave hello with the right hand", "wave goodbye to the person in front of you")


def load_config() -> ModalityConfig:
    return load_modality_config(CONFIG_PATH)


def wave_trajectory(times: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, 17) upper body and (T, 14) hands, radians: right arm raised and waving, left arm resting."""
    hz = rng.uniform(0.8, 1.4)  # wave frequency
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * hz * times + phase)
    raise_up = np.clip(times / 0.8, 0.0, 1.0)  # the arm comes up over the first 0.8 s
    body = np.zeros((len(times), 17))
    body[:, 0] = 0.1 * np.sin(2 * np.pi * 0.3 * times)  # waist yaw sway
    body[:, 3] = 0.2 + 0.05 * np.sin(2 * np.pi * 0.5 * times)  # left shoulder pitch (resting)
    body[:, 4] = 0.25  # left shoulder roll: arm slightly out
    body[:, 6] = 0.6  # left elbow
    body[:, 10] = -0.4 * raise_up  # right shoulder pitch
    body[:, 11] = -1.3 * raise_up  # right shoulder roll: arm up to the side
    body[:, 13] = raise_up * (0.8 + 0.45 * wave)  # right elbow: the wave itself
    body[:, 16] = raise_up * 0.3 * wave  # right wrist yaw follows it
    # every joint also drifts a little (real joints are never perfectly still; keeps min/max stats apart)
    body += 0.01 * np.sin(2 * np.pi * rng.uniform(0.1, 0.6, 17) * times[:, None] + rng.uniform(0, 6.3, 17))
    hands = np.zeros((len(times), 14))
    hands[:, :7] = 0.6 + 0.05 * rng.standard_normal(7)  # left hand relaxed, half closed
    hands[:, 7:] = 0.1 * (1 - raise_up)[:, None]  # right hand opens while the arm comes up
    hands += 0.01 * np.sin(2 * np.pi * rng.uniform(0.1, 0.6, 14) * times[:, None] + rng.uniform(0, 6.3, 14))
    return body, hands


def render_frame(body: np.ndarray, hands: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 front view of the robot: torso, head, two arms from the joint angles, hands."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (205, 215, 225)
    img[int(0.85 * size):] = (150, 140, 120)  # floor

    def disc(cx: float, cy: float, r: float, colour: tuple[int, int, int]) -> None:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = colour

    def limb(x0: float, y0: float, angle: float, length: float, colour: tuple[int, int, int]) -> tuple[float, float]:
        x1, y1 = x0 + length * np.sin(angle), y0 + length * np.cos(angle)
        for f in np.linspace(0, 1, 14):
            disc(x0 + f * (x1 - x0), y0 + f * (y1 - y0), 0.028 * size, colour)
        return x1, y1

    s = size
    sway = 0.1 * s * body[0]
    img[(abs(xx - 0.5 * s - sway) < 0.13 * s) & (yy > 0.35 * s) & (yy < 0.7 * s)] = (60, 70, 85)  # torso
    disc(0.5 * s + sway, 0.26 * s, 0.08 * s, (70, 80, 95))  # head
    for base, sign, hand in ((3, 1.0, hands[:7]), (10, -1.0, hands[7:])):  # robot's left = image right
        shoulder = (0.5 * s + sway + sign * 0.15 * s, 0.38 * s)
        upper = sign * (0.15 + 1.6 * abs(body[base + 1])) + 0.3 * body[base]  # 0 = hanging down
        elbow = limb(*shoulder, upper, 0.17 * s, (90, 110, 140))
        wrist = limb(*elbow, upper + sign * body[base + 3] + body[base + 6], 0.15 * s, (110, 130, 165))
        closure = float(np.clip(hand.mean(), 0, 1))
        disc(*wrist, 0.045 * s, (int(240 * (1 - closure)) + 15, 170, int(200 * closure) + 40))
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    codec = video_codec()
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        if codec != "libx264":
            stream.bit_rate = 8_000_000
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _stats(values: np.ndarray) -> dict[str, list[float]]:
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": values.min(0).tolist(),
            "max": values.max(0).tolist(), "q01": np.quantile(values, 0.01, 0).tolist(),
            "q99": np.quantile(values, 0.99, 0).tolist()}


def make_wave_dataset(out: Path, cfg: ModalityConfig, episodes: int = 2, length: int = 48, fps: float = 20.0,
                      image_size: int = 256, seed: int = 0) -> Path:
    """A LeRobot v2 `g1_wave` dataset: waving trajectories, rendered frames, wave tasks, matching stats."""
    out = Path(out)
    make_dataset(out, cfg, num_episodes=episodes, episode_length=length, image_size=image_size, fps=fps, seed=seed)
    info = json.loads((out / "meta" / "info.json").read_text())
    views = [k.split(".", 1)[1] for k in cfg.video_keys]
    states, actions = [], []
    for episode in range(episodes):
        rng = np.random.default_rng([seed, episode])
        body, hands = wave_trajectory(np.arange(length + 1) / fps, rng)
        traj = np.concatenate([body, hands], axis=1)  # upper_body then hands: the config's concat order
        state, action = traj[:-1], traj[1:]  # action(t) = state(t + 1)
        chunk = episode // info["chunks_size"]
        data_file = out / DATA_PATH.format(episode_chunk=chunk, episode_index=episode)
        table = pq.read_table(data_file)
        for column, values in (("observation.state", state), ("action", action)):
            i = table.schema.get_field_index(column)
            table = table.set_column(i, column, pa.array(list(values), type=table.schema.field(column).type))
        pq.write_table(table, data_file)
        frames = np.stack([render_frame(b, h, image_size) for b, h in zip(body[:-1], hands[:-1], strict=True)])
        for view in views:
            video = out / VIDEO_PATH.format(episode_chunk=chunk, episode_index=episode,
                                            video_key=f"observation.images.{view}")
            _write_video(video, frames, fps)
        states.append(state)
        actions.append(action)
    stats = json.loads((out / "meta" / "stats.json").read_text())
    stats["observation.state"] = _stats(np.concatenate(states))
    stats["action"] = _stats(np.concatenate(actions))
    (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=4) + "\n")
    # the tasks: same indices, waving texts
    tasks = [json.loads(line) for line in (out / "meta" / "tasks.jsonl").read_text().splitlines() if line]
    renamed = {t["task"]: WAVE_TASKS[t["task_index"] % len(WAVE_TASKS)] for t in tasks}
    (out / "meta" / "tasks.jsonl").write_text("".join(
        json.dumps({"task_index": t["task_index"], "task": renamed[t["task"]]}) + "\n" for t in tasks))
    rows = [json.loads(line) for line in (out / "meta" / "episodes.jsonl").read_text().splitlines() if line]
    (out / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps(r | {"tasks": [renamed.get(t, t) for t in r["tasks"]]}) + "\n" for r in rows))
    return out
