"""Rotation representations converted the way GR00T N1.5 converts them, as TorchScript-able torch code.

Facts (N1.5 `RotationTransform` in gr00t/data/transform/state_action.py @ n1.5-release, which chains
pytorch3d.transforms functions; representation names from gr00t/data/schema.py `RotationType`):

- Every conversion goes source -> 3x3 rotation matrix -> target; `forward` converts the dataset's
  representation (metadata `rotation_type`) to the data config's target, `inverse` goes back.
- `quaternion`: 4 values, real part first (w, x, y, z). To a matrix with the standard formula scaled by
  2 / |q|^2 (so a non-unit quaternion still gives a rotation). From a matrix: the best conditioned of the four
  candidate solutions (largest |component|), then the sign flipped so that w >= 0 (pytorch3d's
  `standardize_quaternion`).
- `axis_angle`: 3 values, the rotation axis scaled by the angle in radians. From a matrix through the
  quaternion above, so the angle lies in [0, pi].
- `rotation_6d`: the first two ROWS of the matrix (r00 r01 r02 r10 r11 r12). To a matrix: Gram-Schmidt on
  those two rows (normalise the first, remove its component from the second, normalise), third row = their
  cross product.
- `matrix`: the 9 entries row-major. (N1.5 hands pytorch3d the flat (..., 9) vector, which it cannot convert;
  reading it row-major is our extension.)
- `euler_angles_<abc>`: the letters map r -> X, p -> Y, y -> Z, and the matrix is R_a(t0) @ R_b(t1) @ R_c(t2):
  intrinsic rotations about the moving axes in the written order (scipy's upper-case convention).
  rpy = XYZ, ryp = XZY, pry = YXZ, pyr = YZX, yrp = ZXY, ypr = ZYX. From a matrix: the middle angle in
  [-pi/2, pi/2], the outer ones in (-pi, pi]. Where cos(middle) < sqrt(machine epsilon) (gimbal lock) the third
  angle is set to 0 and the first absorbs the rotation; pytorch3d has no such branch and returns angles that do
  not rebuild the matrix there (its asin also loses half the digits near +-pi/2), elsewhere both agree to
  rounding.

An absolute rotation converted to another representation is normalised min_max with fixed bounds
(`ROTATION_BOUNDS`), not the dataset statistics: N1.5's `_DEFAULT_MIN_MAX_STATISTICS`, built with
`torch.tensor(list)`, so pi is the float32 pi widened.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

ROTATION_TYPES: tuple[str, ...] = (
    "axis_angle", "quaternion", "rotation_6d", "matrix",
    "euler_angles_rpy", "euler_angles_ryp", "euler_angles_pry", "euler_angles_pyr", "euler_angles_yrp",
    "euler_angles_ypr",
)
_WIDTHS = {"axis_angle": 3, "quaternion": 4, "rotation_6d": 6, "matrix": 9, "euler_angles": 3}
_PI_F32 = float(np.float32(math.pi))
# Fixed min_max bounds of a converted absolute rotation, per target representation family.
ROTATION_BOUNDS: dict[str, float] = {"rotation_6d": 1.0, "quaternion": 1.0, "axis_angle": _PI_F32,
                                     "euler_angles": _PI_F32}

def family(rotation_type: str) -> str:
    """'euler_angles_rpy' -> 'euler_angles'; other names are their own family."""
    return "euler_angles" if rotation_type.startswith("euler_angles") else rotation_type


def rotation_width(rotation_type: str) -> int:
    """Values per sample of a representation (quaternion 4, rotation_6d 6, ...)."""
    return _WIDTHS[family(rotation_type)]


def euler_axes(rotation_type: str) -> list[int]:
    """'euler_angles_ypr' -> [2, 1, 0]: the axis index of each angle, in the order they are applied."""
    if not rotation_type.startswith("euler_angles_"):
        return []
    letters = rotation_type.rsplit("_", 1)[1]
    return [{"r": 0, "p": 1, "y": 2}[c] for c in letters]


def _axis_rotation(axis: int, angle: Tensor) -> Tensor:
    """(..., 3, 3) rotation by `angle` about the x (0), y (1) or z (2) axis."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = [one, zero, zero, zero, c, -s, zero, s, c]
    elif axis == 1:
        rows = [c, zero, s, zero, one, zero, -s, zero, c]
    else:
        rows = [c, -s, zero, s, c, zero, zero, zero, one]
    return torch.stack(rows, dim=-1).reshape(list(angle.shape) + [3, 3])


def _quaternion_to_matrix(q: Tensor) -> Tensor:
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    two_s = 2.0 / (q * q).sum(-1)
    rows = [
        1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
        two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
        two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(list(q.shape[:-1]) + [3, 3])


def _matrix_to_quaternion(m: Tensor) -> Tensor:
    """Four candidate solutions, each exact where its leading component is large; keep the largest, w >= 0."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2)
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    lead = torch.sqrt(torch.clamp(sq, min=0.0))  # 2|w|, 2|x|, 2|y|, 2|z|
    d = 2.0 * torch.clamp(lead, min=0.1)  # the chosen candidate always has lead >= 1
    by_w = torch.stack([lead[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], -1) / d[..., 0:1]
    by_x = torch.stack([m21 - m12, lead[..., 1] ** 2, m10 + m01, m02 + m20], -1) / d[..., 1:2]
    by_y = torch.stack([m02 - m20, m10 + m01, lead[..., 2] ** 2, m12 + m21], -1) / d[..., 2:3]
    by_z = torch.stack([m10 - m01, m20 + m02, m21 + m12, lead[..., 3] ** 2], -1) / d[..., 3:4]
    best = torch.argmax(lead, dim=-1, keepdim=True)
    q = torch.where(best == 0, by_w, torch.where(best == 1, by_x, torch.where(best == 2, by_y, by_z)))
    return torch.where(q[..., 0:1] < 0, -q, q)


def _axis_angle_to_matrix(v: Tensor) -> Tensor:
    """Rodrigues: I + A [v]x + B [v]x^2 with A = sin t / t, B = (1 - cos t) / t^2 (series near t = 0)."""
    theta_sq = (v * v).sum(-1)
    theta = torch.sqrt(theta_sq)
    small = theta < 1e-4
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta_sq / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta_sq / 24, (1 - torch.cos(safe)) / (safe * safe))
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(list(v.shape[:-1]) + [3, 3])
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def _quaternion_to_axis_angle(q: Tensor) -> Tensor:
    """angle = 2 atan2(|xyz|, w); axis-angle = xyz * angle / sin(angle / 2) (series near 0)."""
    xyz = q[..., 1:]
    norm = torch.sqrt((xyz * xyz).sum(-1, keepdim=True))
    half = torch.atan2(norm, q[..., :1])
    angle = 2 * half
    small = torch.abs(angle) < 1e-6
    safe = torch.where(small, torch.ones_like(angle), angle)
    ratio = torch.where(small, 0.5 - angle * angle / 48, torch.sin(half) / safe)
    return xyz / ratio


def _rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / torch.clamp(torch.linalg.vector_norm(a1, dim=-1, keepdim=True), min=1e-12)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / torch.clamp(torch.linalg.vector_norm(b2, dim=-1, keepdim=True), min=1e-12)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def _euler_to_matrix(angles: Tensor, axes: list[int]) -> Tensor:
    m = _axis_rotation(axes[0], angles[..., 0])
    m = m @ _axis_rotation(axes[1], angles[..., 1])
    return m @ _axis_rotation(axes[2], angles[..., 2])


def _matrix_to_euler(m: Tensor, axes: list[int]) -> Tensor:
    """Tait-Bryan angles of R = R_i(a) R_j(b) R_k(c); s = +1 for a cyclic (i, j, k), -1 otherwise."""
    i, j, k = axes[0], axes[1], axes[2]
    s = 1.0 if (j - i) % 3 == 1 else -1.0
    cos_middle = torch.sqrt(m[..., i, i] ** 2 + m[..., i, j] ** 2)
    middle = torch.atan2(s * m[..., i, k], cos_middle)  # = asin(s R[i, k]), without asin's error near +-pi/2
    first = torch.atan2(-s * m[..., j, k], m[..., k, k])
    third = torch.atan2(-s * m[..., i, j], m[..., i, i])
    # sqrt(machine epsilon): past it the general formula's rounding error (eps / cos) beats the branch's (2 cos)
    locked = cos_middle < (1.5e-8 if m.dtype == torch.float64 else 3.5e-4)
    # with the third angle 0, R = R_i(a) R_j(b) and a is read from the j-th column
    first = torch.where(locked, torch.atan2(s * m[..., k, j], m[..., j, j]), first)
    third = torch.where(locked, torch.zeros_like(third), third)
    return torch.stack([first, middle, third], dim=-1)


def to_matrix(x: Tensor, rep: str, axes: list[int]) -> Tensor:
    """(..., width of rep) -> (..., 3, 3)."""
    if rep == "matrix":
        return x.reshape(list(x.shape[:-1]) + [3, 3])
    if rep == "quaternion":
        return _quaternion_to_matrix(x)
    if rep == "axis_angle":
        return _axis_angle_to_matrix(x)
    if rep == "rotation_6d":
        return _rotation_6d_to_matrix(x)
    return _euler_to_matrix(x, axes)


def from_matrix(m: Tensor, rep: str, axes: list[int]) -> Tensor:
    """(..., 3, 3) -> (..., width of rep)."""
    if rep == "matrix":
        return m.reshape(list(m.shape[:-2]) + [9])
    if rep == "quaternion":
        return _matrix_to_quaternion(m)
    if rep == "axis_angle":
        return _quaternion_to_axis_angle(_matrix_to_quaternion(m))
    if rep == "rotation_6d":
        return m[..., :2, :].reshape(list(m.shape[:-2]) + [6])
    return _matrix_to_euler(m, axes)


class RotationConversion(nn.Module):
    """One representation to another through the matrix; `forward` source -> target, `inverse` back."""

    def __init__(self, source: str, target: str):
        super().__init__()
        for name in (source, target):
            if name not in ROTATION_TYPES:
                raise ValueError(f"unknown rotation type {name!r}; use one of {', '.join(ROTATION_TYPES)}")
        self.source, self.target = family(source), family(target)
        # non-euler representations carry unused axes: TorchScript infers a list's type from its elements
        self.source_axes, self.target_axes = euler_axes(source) or [0, 1, 2], euler_axes(target) or [0, 1, 2]
        self.source_width, self.target_width = rotation_width(source), rotation_width(target)

    def forward(self, x: Tensor) -> Tensor:
        return from_matrix(to_matrix(x, self.source, self.source_axes), self.target, self.target_axes)

    @torch.jit.export
    def inverse(self, y: Tensor) -> Tensor:
        return from_matrix(to_matrix(y, self.target, self.target_axes), self.source, self.source_axes)


def convert(x: np.ndarray | Tensor, source: str, target: str) -> np.ndarray:
    """Host-side convenience: float64 numpy in, float64 numpy out."""
    with torch.no_grad():
        return RotationConversion(source, target)(torch.as_tensor(np.asarray(x), dtype=torch.float64)).numpy()
