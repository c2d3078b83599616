"""BVH (Biovision hierarchy) files: a strict parser and forward kinematics to world joint positions.

Format handled: ``HIERARCHY`` with one ``ROOT``, nested ``JOINT`` blocks, ``End Site`` blocks,
``OFFSET x y z`` and ``CHANNELS n <names>`` where the names are any of ``Xposition Yposition
Zposition Xrotation Yrotation Zrotation`` in any order (so any rotation order), then ``MOTION``,
``Frames: N``, ``Frame Time: t`` and one row of channel values per frame. Braces may share a line
with a keyword; joint names may contain ``:`` (Mixamo's ``mixamorig:Hips``).

Semantics (the common reading of the format, stated once here):

- Rotation channels are Euler angles in degrees. A joint's local rotation is the product of the
  elementary rotations **in the order the channels are listed**: ``CHANNELS 3 Zrotation Xrotation
  Yrotation`` gives ``R = Rz(z) @ Rx(x) @ Ry(y)`` acting on column vectors.
- A joint's local translation is its ``OFFSET``; position channels, where present, *replace* the
  corresponding offset component (roots usually have a zero offset, and files that put position
  channels on every joint store the offset there).
- World position of joint j: ``p_j = p_parent + R_parent_world @ t_j``; ``R_j_world =
  R_parent_world @ R_j``. End sites are kept as joints without channels, named ``<parent>_End``.

Errors name the file and the line: a malformed or truncated file raises :class:`BvhError`.
A ``Frames:`` count that disagrees with the number of data rows warns (:class:`BvhWarning`) and
the rows actually present are used.

Units: BVH has none. :func:`detect_unit_scale` picks the factor to metres from the rest-pose
height (see its docstring); every length it returns is ``file units * scale``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
_ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")
_VALID_CHANNELS = frozenset(_POSITION_CHANNELS + _ROTATION_CHANNELS)

# Candidate units for detect_unit_scale, metres per file unit. "cmu" is the cgspeed.com BVH
# conversion of the CMU database, whose unit is the ASF length unit (1/0.45 inch).
UNIT_SCALES: dict[str, float] = {
    "m": 1.0,
    "dm": 0.1,
    "cm": 0.01,
    "mm": 0.001,
    "inch": 0.0254,
    "cmu": 0.0254 / 0.45,
}


class BvhError(ValueError):
    """A BVH file that cannot be read; the message names the file and the line."""


class BvhWarning(UserWarning):
    """A BVH file that is readable but inconsistent (e.g. a wrong ``Frames:`` count)."""


@dataclass(frozen=True)
class BvhJoint:
    """One node of the hierarchy.

    Attributes:
        name: joint name as written (end sites: ``<parent name>_End``).
        parent: index of the parent joint in :attr:`BvhMotion.joints`, -1 for the root.
        offset: (3,) float64, translation from the parent in file units.
        channels: channel names in file order (empty for end sites).
        channel_start: column of this joint's first channel in :attr:`BvhMotion.values`.
        line: 1-based line of the ``ROOT``/``JOINT``/``End Site`` keyword.
    """

    name: str
    parent: int
    offset: np.ndarray
    channels: tuple[str, ...]
    channel_start: int
    line: int

    @property
    def is_end_site(self) -> bool:
        return not self.channels and self.name.endswith("_End")


@dataclass
class BvhMotion:
    """A parsed BVH file.

    Attributes:
        joints: the hierarchy in file (depth-first) order; parents precede children.
        values: (T, C) float64 channel values, one row per frame, columns in file order.
        frame_time: seconds per frame.
        source: where the data came from (path or ``"<string>"``).
    """

    joints: list[BvhJoint]
    values: np.ndarray
    frame_time: float
    source: str

    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def parents(self) -> np.ndarray:
        return np.array([j.parent for j in self.joints], dtype=np.int64)

    @property
    def num_frames(self) -> int:
        return int(self.values.shape[0])

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time

    def index(self, name: str) -> int:
        """Index of the joint called ``name`` (KeyError listing the names if absent)."""
        for i, joint in enumerate(self.joints):
            if joint.name == name:
                return i
        raise KeyError(f"{self.source}: no joint {name!r}; joints are {self.names}")


def _tokenize(lines: list[str], first: int, last: int) -> list[tuple[str, int]]:
    """Whitespace tokens of lines[first:last] with line numbers; braces become own tokens."""
    tokens: list[tuple[str, int]] = []
    for number in range(first, last):
        text = lines[number].replace("{", " { ").replace("}", " } ")
        tokens.extend((token, number + 1) for token in text.split())
    return tokens


def _parse_float(token: str, line: int, source: str, what: str) -> float:
    try:
        value = float(token)
    except ValueError:
        message = f"{source}, line {line}: expected a number for {what}, found {token!r}"
        raise BvhError(message) from None
    if not math.isfinite(value):
        raise BvhError(f"{source}, line {line}: {what} is not finite ({token!r})")
    return value


class _HierarchyParser:
    def __init__(self, tokens: list[tuple[str, int]], source: str, end_line: int) -> None:
        self.tokens = tokens
        self.source = source
        self.end_line = end_line
        self.pos = 0
        self.joints: list[BvhJoint] = []
        self.num_channels = 0

    def error(self, line: int, message: str) -> BvhError:
        return BvhError(f"{self.source}, line {line}: {message}")

    def next(self, expecting: str) -> tuple[str, int]:
        if self.pos >= len(self.tokens):
            raise self.error(self.end_line, f"unexpected end of hierarchy, expecting {expecting}")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, word: str) -> int:
        token, line = self.next(repr(word))
        if token != word:
            raise self.error(line, f"expected {word!r}, found {token!r}")
        return line

    def parse(self) -> None:
        token, line = self.next("ROOT")
        if token != "ROOT":
            raise self.error(line, f"expected 'ROOT', found {token!r}")
        self.joint(parent=-1, keyword_line=line)
        if self.pos != len(self.tokens):
            token, line = self.tokens[self.pos]
            raise self.error(line, f"unexpected {token!r} after the root joint's closing brace")

    def name(self, keyword_line: int) -> str:
        words = []
        while self.pos < len(self.tokens) and self.tokens[self.pos][1] == keyword_line:
            if self.tokens[self.pos][0] == "{":
                break
            words.append(self.tokens[self.pos][0])
            self.pos += 1
        if not words:
            raise self.error(keyword_line, "joint without a name")
        return " ".join(words)

    def offset(self) -> np.ndarray:
        self.expect("OFFSET")
        values = []
        for axis in "xyz":
            token, line = self.next(f"OFFSET {axis}")
            values.append(_parse_float(token, line, self.source, f"OFFSET {axis}"))
        return np.array(values, dtype=np.float64)

    def joint(self, parent: int, keyword_line: int) -> None:
        name = self.name(keyword_line)
        self.expect("{")
        offset = self.offset()
        token, line = self.next("'CHANNELS'")
        if token != "CHANNELS":
            raise self.error(line, f"expected 'CHANNELS' in joint {name!r}, found {token!r}")
        count_token, count_line = self.next("the channel count")
        if not count_token.isdigit():
            raise self.error(count_line, f"channel count must be an integer, found {count_token!r}")
        channels = []
        for _ in range(int(count_token)):
            channel, channel_line = self.next("a channel name")
            if channel not in _VALID_CHANNELS:
                raise self.error(
                    channel_line,
                    f"unknown channel {channel!r} in joint {name!r} "
                    f"(expected one of {sorted(_VALID_CHANNELS)})",
                )
            channels.append(channel)
        if len(set(channels)) != len(channels):
            raise self.error(line, f"joint {name!r} repeats a channel: {channels}")
        index = len(self.joints)
        self.joints.append(
            BvhJoint(name, parent, offset, tuple(channels), self.num_channels, keyword_line)
        )
        self.num_channels += len(channels)
        while True:
            token, line = self.next(f"'JOINT', 'End Site' or '}}' closing joint {name!r}")
            if token == "}":
                return
            if token == "JOINT":
                self.joint(parent=index, keyword_line=line)
            elif token == "End":
                self.expect("Site")
                self.expect("{")
                end_offset = self.offset()
                self.expect("}")
                self.joints.append(
                    BvhJoint(f"{name}_End", index, end_offset, (), self.num_channels, line)
                )
            else:
                raise self.error(line, f"unexpected {token!r} inside joint {name!r}")


def parse_bvh(source: str | Path, *, text: str | None = None) -> BvhMotion:
    """Parse a BVH file.

    Args:
        source: path of the file (or a label for ``text``).
        text: the file's contents; read from ``source`` when None.

    Returns:
        :class:`BvhMotion` with float64 channel values of shape (T, C).

    Raises:
        BvhError: malformed or truncated file; the message names the line.
    Warns:
        BvhWarning: the ``Frames:`` header disagrees with the rows present (the rows are used).
    """
    label = str(source)
    if text is None:
        text = Path(source).read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    stripped = [line.strip() for line in lines]
    try:
        hierarchy_line = stripped.index("HIERARCHY")
    except ValueError:
        first = next((i for i, s in enumerate(stripped) if s), 0)
        message = f"{label}, line {first + 1}: expected 'HIERARCHY' (is this a BVH file?)"
        raise BvhError(message) from None
    motion_line = next(
        (i for i in range(hierarchy_line + 1, len(lines)) if stripped[i] == "MOTION"), None
    )
    if motion_line is None:
        raise BvhError(
            f"{label}, line {len(lines)}: no 'MOTION' section (file truncated in the hierarchy?)"
        )
    parser = _HierarchyParser(
        _tokenize(lines, hierarchy_line + 1, motion_line), label, end_line=motion_line + 1
    )
    parser.parse()

    header_frames, frame_time, data_start = _parse_motion_header(lines, motion_line, label)
    values = _parse_rows(lines, data_start, parser.num_channels, label)
    if values.shape[0] != header_frames:
        warnings.warn(
            f"{label}: header says Frames: {header_frames} but {values.shape[0]} data rows "
            f"follow; using the {values.shape[0]} rows present",
            BvhWarning,
            stacklevel=2,
        )
    if values.shape[0] == 0:
        raise BvhError(f"{label}, line {len(lines)}: no frames of motion data")
    return BvhMotion(parser.joints, values, frame_time, label)


def _parse_motion_header(lines: list[str], motion_line: int, source: str) -> tuple[int, float, int]:
    """``Frames: N`` and ``Frame Time: t`` after MOTION; returns (N, t, index of first row)."""
    fields: dict[str, str] = {}
    index = motion_line + 1
    for key in ("Frames:", "Frame Time:"):
        while index < len(lines) and not lines[index].strip():
            index += 1
        if index >= len(lines):
            raise BvhError(f"{source}, line {len(lines)}: file ends before {key!r}")
        text = lines[index].strip()
        if not text.startswith(key):
            raise BvhError(f"{source}, line {index + 1}: expected {key!r}, found {text!r}")
        fields[key] = text[len(key) :].strip()
        index += 1
    frames_text = fields["Frames:"]
    if not frames_text.isdigit():
        raise BvhError(f"{source}, line {motion_line + 2}: bad frame count {frames_text!r}")
    frame_time = _parse_float(fields["Frame Time:"], index, source, "Frame Time")
    if frame_time <= 0:
        raise BvhError(f"{source}, line {index}: Frame Time must be positive, got {frame_time}")
    return int(frames_text), frame_time, index


def _parse_rows(lines: list[str], start: int, num_channels: int, source: str) -> np.ndarray:
    rows = [(number, line) for number, line in enumerate(lines[start:], start + 1) if line.strip()]
    if not rows:
        return np.zeros((0, num_channels))
    counts = np.array([len(line.split()) for _, line in rows])
    bad = np.flatnonzero(counts != num_channels)
    if bad.size:
        number = rows[bad[0]][0]
        hint = " (truncated file?)" if bad[0] == len(rows) - 1 else ""
        raise BvhError(
            f"{source}, line {number}: expected {num_channels} channel values, "
            f"found {counts[bad[0]]}{hint}"
        )
    try:
        values = np.array(" ".join(line for _, line in rows).split(), dtype=np.float64)
    except ValueError:
        for number, line in rows:
            for token in line.split():
                _parse_float(token, number, source, "a channel value")
        raise
    values = values.reshape(len(rows), num_channels)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        number = rows[int(np.flatnonzero(~finite)[0])][0]
        raise BvhError(f"{source}, line {number}: non-finite channel value")
    return values


def _axis_rotations(axis: str, degrees: np.ndarray) -> np.ndarray:
    """(T,) angles in degrees -> (T, 3, 3) rotations about the x, y or z axis."""
    radians = np.deg2rad(degrees)
    c, s = np.cos(radians), np.sin(radians)
    one, zero = np.ones_like(c), np.zeros_like(c)
    if axis == "X":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "Y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def local_transforms(bvh: BvhMotion) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame local rotations (T, J, 3, 3) and translations (T, J, 3) in file units."""
    frames = bvh.num_frames
    rotations = np.broadcast_to(np.eye(3), (frames, len(bvh.joints), 3, 3)).copy()
    translations = np.broadcast_to(
        np.stack([j.offset for j in bvh.joints]), (frames, len(bvh.joints), 3)
    ).copy()
    for j, joint in enumerate(bvh.joints):
        for k, channel in enumerate(joint.channels):
            column = bvh.values[:, joint.channel_start + k]
            if channel in _POSITION_CHANNELS:
                translations[:, j, "XYZ".index(channel[0])] = column
            else:
                rotations[:, j] = rotations[:, j] @ _axis_rotations(channel[0], column)
    return rotations, translations


def forward_kinematics(bvh: BvhMotion, *, scale: float = 1.0) -> np.ndarray:
    """World positions of every joint (end sites included) for every frame.

    Args:
        bvh: parsed file.
        scale: factor applied to all lengths (e.g. from :func:`detect_unit_scale`).

    Returns:
        (T, J, 3) float64 positions in ``file units * scale``, the file's own axes.
    """
    rotations, translations = local_transforms(bvh)
    world_rotations = np.empty_like(rotations)
    positions = np.empty_like(translations)
    for j, parent in enumerate(bvh.parents):
        if parent < 0:
            world_rotations[:, j] = rotations[:, j]
            positions[:, j] = translations[:, j]
        else:
            world_rotations[:, j] = world_rotations[:, parent] @ rotations[:, j]
            positions[:, j] = positions[:, parent] + np.einsum(
                "tab,tb->ta", world_rotations[:, parent], translations[:, j]
            )
    return positions * scale


def rest_positions(bvh: BvhMotion) -> np.ndarray:
    """(J, 3) joint positions of the rest pose (offsets only, no channels), file units."""
    positions = np.zeros((len(bvh.joints), 3))
    for j, joint in enumerate(bvh.joints):
        base = positions[joint.parent] if joint.parent >= 0 else 0.0
        positions[j] = base + joint.offset
    return positions


def detect_unit_scale(bvh: BvhMotion, *, human_height_m: float = 1.7) -> tuple[float, str]:
    """Guess metres per file unit from the rest-pose height of the skeleton.

    The height is the largest extent of the rest pose (offsets only, end sites included) along any
    axis. The unit chosen is the entry of :data:`UNIT_SCALES` whose implied height is closest to
    ``human_height_m`` in log ratio: a 172-unit skeleton reads as centimetres, a 1.7-unit one as
    metres, the CMU conversion's ~25 units as its ASF unit (1/0.45 inch). Pass an explicit scale
    to the importers when the skeleton is not a standing adult.

    Returns:
        (metres per file unit, unit name).
    """
    rest = rest_positions(bvh)
    height = float((rest.max(axis=0) - rest.min(axis=0)).max())
    if height <= 0:
        raise BvhError(f"{bvh.source}: the rest pose has zero extent; pass a unit scale")
    name = min(
        UNIT_SCALES, key=lambda unit: abs(math.log(height * UNIT_SCALES[unit] / human_height_m))
    )
    return UNIT_SCALES[name], name


def format_bvh(
    names: list[str],
    parents: list[int],
    offsets: np.ndarray,
    root_positions: np.ndarray,
    angles: np.ndarray,
    *,
    rotation_order: str = "ZXY",
    frame_time: float = 1 / 30,
) -> str:
    """BVH text for a skeleton (the inverse of :func:`parse_bvh` + :func:`local_transforms`).

    Args:
        names: J joint names; joint 0 is the root, every parent precedes its children.
        parents: J parent indices (-1 for the root).
        offsets: (J, 3) offsets from the parent (the root's is written as given).
        root_positions: (T, 3) root position channels.
        angles: (T, J, 3) Euler angles in degrees, per joint **in ``names`` order** (the writer
            emits them in the file's depth-first order), ordered as ``rotation_order``.
        rotation_order: e.g. "ZXY": channels ``Zrotation Xrotation Yrotation``.
        frame_time: seconds per frame.

    Joints without children get an ``End Site`` with a zero offset.
    """
    channels = " ".join(f"{axis}rotation" for axis in rotation_order)
    children: dict[int, list[int]] = {j: [] for j in range(len(names))}
    for joint, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(joint)
    lines = ["HIERARCHY"]
    file_order: list[int] = []

    def emit(joint: int, depth: int) -> None:
        file_order.append(joint)
        pad = "  " * depth
        x, y, z = offsets[joint]
        if parents[joint] < 0:
            lines.extend([f"ROOT {names[joint]}", "{", f"  OFFSET {x:.6f} {y:.6f} {z:.6f}"])
            lines.append(f"  CHANNELS 6 Xposition Yposition Zposition {channels}")
        else:
            lines.extend([f"{pad}JOINT {names[joint]}", pad + "{"])
            lines.append(f"{pad}  OFFSET {x:.6f} {y:.6f} {z:.6f}")
            lines.append(f"{pad}  CHANNELS 3 {channels}")
        for child in children[joint]:
            emit(child, depth + 1)
        if not children[joint]:
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET 0 0 0", f"{pad}  }}"])
        lines.append(pad + "}")

    emit(0, 0)
    lines += ["MOTION", f"Frames: {len(root_positions)}", f"Frame Time: {frame_time:.7f}"]
    values = np.concatenate(
        [root_positions, angles[:, file_order].reshape(len(angles), -1)], axis=1
    )
    lines.extend(" ".join(f"{v:.6f}" for v in row) for row in values)
    return "\n".join(lines) + "\n"
