"""A synthetic person re-id dataset in Market-1501's exact layout, with poses and masks.

    python -m reidfast.data.synthetic --out DIR [--ids N] [--cameras C] [--domain a|b] [--seed S]
                                      [--height H --width W] [--force]

writes::

    DIR/bounding_box_train/0002_c1s1_000451_03.jpg   train ids (half of --ids)
    DIR/bounding_box_test/...                          gallery: test ids, plus distractors (0000_*) and junk (-1_*)
    DIR/query/...                                      one image per test id and camera
    DIR/masks/<split>/<image stem>.png                 binary person mask (0 / 255)
    DIR/annotations.csv                                18 OpenPose keypoints, name:keypoints_y:keypoints_x, -1 missing
    DIR/synthetic.json                                 the generation parameters

Each identity fixes clothing colours and patterns, sleeve and trouser types, body shape, hair and carried items
(backpack, shoulder bag, cap). Each camera fixes lighting, colour cast, contrast, blur, noise, background and
viewpoint (a homography); each image draws a pose (facing direction, walking phase, arm swing), a box jitter and
background clutter, and sometimes an occluder. Colours come from a small shared palette, so single attributes are
shared by many identities and only their combination identifies a person, while the cameras' colour casts move
every colour: raw colour statistics match poorly across cameras, so an untrained network scores low while a
trained one must learn colour relations that survive the casts.
Domain "b" has different people and different cameras (darker, cooler light, steeper viewpoints, other
backgrounds), for unsupervised domain adaptation from "a". Its cool cast is shared by all its cameras while each
camera's own cast stays as moderate as in "a": the a -> b gap is the domain's, and b stays learnable.

The output is a function of the arguments only (same seed, same bytes on the same Pillow version).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .pose import NUM_KEYPOINTS, write_keypoints_csv

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the drawing changes, so cached copies are regenerated
SPLITS = ("bounding_box_train", "bounding_box_test", "query")

PALETTE = np.array([
    [20, 20, 22], [235, 235, 230], [128, 128, 128], [190, 30, 35], [35, 60, 170], [25, 30, 75],
    [40, 130, 60], [230, 200, 40], [110, 70, 40], [215, 190, 150], [230, 130, 170], [110, 50, 140],
    [235, 120, 30], [110, 115, 50], [30, 130, 135], [110, 25, 40],
], dtype=np.float32)
SKIN = np.array([[240, 200, 170], [210, 160, 120], [160, 110, 75], [95, 65, 45]], dtype=np.float32)
HAIR = np.array([[25, 20, 15], [70, 45, 25], [150, 110, 60], [200, 190, 170]], dtype=np.float32)

# label map values
BG, SKIN_L, HAIR_L, TOP_L, BOTTOM_L, SHOE_L, ITEM_L, HAT_L = range(8)
FRONT, BACK, LEFT, RIGHT = range(4)  # LEFT: the person walks towards the image's left


@dataclass
class Identity:
    height_scale: float
    width_scale: float
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    top: np.ndarray
    top_pattern: int        # 0 solid, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 two-tone, 5 front logo
    top_second: np.ndarray
    pattern_count: int
    long_sleeves: bool
    bottom: np.ndarray
    bottom_type: int        # 0 trousers, 1 shorts, 2 skirt
    shoes: np.ndarray
    item: int               # 0 none, 1 backpack, 2 shoulder bag, 3 cap
    item_colour: np.ndarray
    bag_side: int           # +1 the person's right, -1 their left


@dataclass
class Camera:
    gain: np.ndarray        # per-channel colour cast
    brightness: float
    gamma: float
    noise: float
    blur: int
    wall: np.ndarray
    floor: np.ndarray
    horizon: float          # floor line, fraction of the height
    pillar_period: float
    tilt: float             # projective terms of the viewpoint homography
    yaw: float
    roll: float
    zoom: float
    facing_bias: np.ndarray  # probability of front/back/left/right in this camera


def _palette_colour(rng: np.random.Generator) -> np.ndarray:
    return np.clip(PALETTE[rng.integers(len(PALETTE))] + rng.normal(0, 12, 3), 0, 255)


def make_identity(rng: np.random.Generator) -> Identity:
    top = _palette_colour(rng)
    second = _palette_colour(rng)
    while np.abs(second - top).sum() < 90:  # a pattern must be visible
        second = _palette_colour(rng)
    return Identity(
        height_scale=rng.uniform(0.86, 1.0), width_scale=rng.uniform(0.8, 1.25),
        skin=SKIN[rng.integers(len(SKIN))] + rng.normal(0, 6, 3), hair=HAIR[rng.integers(len(HAIR))],
        long_hair=bool(rng.random() < 0.35), top=top, top_pattern=int(rng.choice(6, p=[.3, .16, .12, .12, .15, .15])),
        top_second=second, pattern_count=int(rng.integers(3, 7)), long_sleeves=bool(rng.random() < 0.5),
        bottom=_palette_colour(rng), bottom_type=int(rng.choice(3, p=[.6, .25, .15])), shoes=_palette_colour(rng),
        item=int(rng.choice(4, p=[.4, .25, .2, .15])), item_colour=_palette_colour(rng),
        bag_side=int(rng.choice([-1, 1])),
    )


def make_camera(rng: np.random.Generator, domain: str) -> Camera:
    if domain == "a":
        # moderate casts: strong enough that raw colours match poorly across cameras, mild enough that a small
        # network trained for minutes on a CPU learns identities that transfer across cameras
        gain = rng.uniform(0.92, 1.08, 3)
        brightness, gamma = rng.uniform(0.9, 1.1), rng.uniform(0.92, 1.1)
        tilt, yaw, roll, zoom = rng.uniform(-0.12, 0.12), rng.uniform(-0.08, 0.08), rng.uniform(-0.05, 0.05), 1.0
        wall, floor = rng.uniform(60, 200, 3), rng.uniform(50, 170, 3)
    else:  # darker, cooler light, steeper viewpoints: a different camera network
        # the cool cast is the domain's (shared by its cameras); per-camera casts stay moderate as in "a", so that
        # b is learnable at CPU-demo sizes and the a -> b gap is the domain's, not noise
        gain = rng.uniform(0.9, 1.1, 3) * np.array([0.85, 0.95, 1.15])
        brightness, gamma = rng.uniform(0.6, 0.85), rng.uniform(1.0, 1.3)
        tilt, yaw = rng.choice([-1, 1]) * rng.uniform(0.12, 0.25), rng.uniform(-0.15, 0.15)
        roll, zoom = rng.uniform(-0.1, 0.1), rng.uniform(0.85, 0.95)
        wall, floor = rng.uniform(20, 120, 3), rng.uniform(90, 220, 3)
    return Camera(gain=gain, brightness=brightness, gamma=gamma, noise=rng.uniform(2, 9),
                  blur=int(rng.integers(0, 2)), wall=wall, floor=floor, horizon=rng.uniform(0.55, 0.85),
                  pillar_period=rng.uniform(0.3, 1.0), tilt=tilt, yaw=yaw, roll=roll, zoom=zoom,
                  facing_bias=rng.dirichlet(np.full(4, 2.0)))


def viewpoint_homography(camera: Camera, rng: np.random.Generator, height: int, width: int,
                         junk: bool = False) -> np.ndarray:
    """3x3 map from canonical person pixels to image pixels: the camera's view plus this box's jitter."""
    scale = camera.zoom * rng.uniform(0.9, 1.08) * (rng.uniform(1.3, 2.0) if junk else 1.0)
    shift = rng.uniform(-0.07, 0.07, 2) * [width, height]
    if junk:  # a bad detection: the person mostly outside the box
        shift += rng.choice([-1, 1], 2) * rng.uniform(0.3, 0.5, 2) * [width, height]
    c, s = np.cos(camera.roll), np.sin(camera.roll)
    # In coordinates centred on the image and scaled to [-1, 1]: rotate, scale, shift, then perspective.
    view = np.array([[scale * c, -scale * s * height / width, 2 * shift[0] / width],
                     [scale * s * width / height, scale * c, 2 * shift[1] / height],
                     [camera.yaw, camera.tilt, 1.0]])
    to_unit = np.array([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1.0]])
    return np.linalg.inv(to_unit) @ view @ to_unit


def apply_homography(matrix: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2]
    return ((matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]) / w,
            (matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]) / w)


def skeleton(person: Identity, facing: int, rng: np.random.Generator, height: int, width: int) -> dict:
    """Canonical joint positions (pixels of an upright box) for a facing direction and a walking phase."""
    p = 0.86 * height * person.height_scale
    top, cx = (height - p) / 2 + rng.uniform(-0.02, 0.02) * height, width / 2
    ws = person.width_scale
    phase, stride = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.45)
    swing = stride * np.sin(phase)
    j = {"head": (cx, top + 0.07 * p), "neck": (cx, top + 0.15 * p), "p": p, "ws": ws, "cx": cx,
         "shoulder_y": top + 0.2 * p, "hip_y": top + 0.52 * p}
    sh_y, hip_y = j["shoulder_y"], j["hip_y"]
    upper_arm, forearm, thigh, shin = 0.17 * p, 0.16 * p, 0.23 * p, 0.23 * p
    if facing in (FRONT, BACK):
        right = -1 if facing == FRONT else 1  # image direction of the person's right side
        for side, sign in (("right", right), ("left", -right)):
            s = sign if side == "right" else sign
            arm_phase = swing if side == "right" else -swing
            shoulder = (cx + s * 0.12 * p * ws, sh_y)
            elbow = (shoulder[0] + s * 0.03 * p, sh_y + upper_arm * np.cos(arm_phase))
            wrist = (elbow[0] + s * 0.01 * p, elbow[1] + forearm * np.cos(1.5 * arm_phase))
            hip = (cx + s * 0.08 * p * ws, hip_y)
            leg_phase = -arm_phase
            knee = (hip[0] + s * 0.01 * p, hip_y + thigh * np.cos(leg_phase))
            ankle = (knee[0] + s * 0.015 * p, knee[1] + shin * np.cos(0.5 * leg_phase))
            j.update({f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_wrist": wrist,
                      f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_ankle": ankle})
    else:
        forward = -1 if facing == LEFT else 1
        for side, sign in (("right", 1), ("left", -1)):
            leg = sign * swing
            depth_shift = 0.015 * p * (1 if (side == "left") == (facing == LEFT) else -1)
            shoulder = (cx + depth_shift, sh_y)
            arm = -0.9 * leg
            elbow = (shoulder[0] + forward * upper_arm * np.sin(arm), sh_y + upper_arm * np.cos(arm))
            bend = arm + 0.5 * abs(arm)
            wrist = (elbow[0] + forward * forearm * np.sin(bend), elbow[1] + forearm * np.cos(bend))
            hip = (cx + depth_shift, hip_y)
            knee = (hip[0] + forward * thigh * np.sin(leg), hip_y + thigh * np.cos(leg))
            shin_angle = leg - 0.6 * max(0.0, -leg) - 0.15 * stride
            ankle = (knee[0] + forward * shin * np.sin(shin_angle), knee[1] + shin * np.cos(shin_angle))
            j.update({f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_wrist": wrist,
                      f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_ankle": ankle})
        j["forward"] = forward
    hx, hy = j["head"]
    r = 0.065 * p
    if facing == FRONT:
        face = {"nose": (hx, hy + 0.15 * r), "right_eye": (hx - 0.4 * r, hy - 0.2 * r),
                "left_eye": (hx + 0.4 * r, hy - 0.2 * r), "right_ear": (hx - 0.9 * r, hy),
                "left_ear": (hx + 0.9 * r, hy)}
    elif facing == BACK:
        face = {"right_ear": (hx + 0.9 * r, hy), "left_ear": (hx - 0.9 * r, hy)}
    else:
        f = j["forward"]
        near = "left" if facing == LEFT else "right"  # walking left shows the person's left side
        face = {"nose": (hx + f * 0.95 * r, hy + 0.15 * r), f"{near}_eye": (hx + f * 0.55 * r, hy - 0.2 * r),
                f"{near}_ear": (hx - f * 0.1 * r, hy)}
    j.update(face)
    j["head_r"] = r
    # plain python floats: numpy float64 scalars would turn the float32 pixel arithmetic into float64
    return {k: (tuple(float(c) for c in v) if isinstance(v, tuple) else float(v)) for k, v in j.items()}


def _capsule(x, y, a, b, radius):
    ax, ay = float(a[0]), float(a[1])  # python floats keep the float32 arrays float32
    dx, dy = float(b[0]) - ax, float(b[1]) - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    return (x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2 <= radius * radius


def _box(x, y, centre, half_w, half_h):
    return (np.abs(x - centre[0]) <= half_w) & (np.abs(y - centre[1]) <= half_h)


class _Canvas:
    """Depth-ordered painting of labelled parts (smaller depth is nearer the camera)."""

    def __init__(self, shape):
        self.label = np.zeros(shape, np.uint8)
        self.depth = np.full(shape, np.inf, np.float32)

    def paint(self, mask, label, depth):
        win = mask & (depth < self.depth)
        self.label[win] = label
        self.depth[win] = depth


def draw_person(person: Identity, joints: dict, facing: int, x, y, canvas: _Canvas) -> None:
    """Paint a person into the label canvas; x, y are the canonical coordinates of every image pixel."""
    p, ws = joints["p"], joints["ws"]
    arm_r, leg_r = 0.034 * p * ws, 0.048 * p * ws
    side_view = facing in (LEFT, RIGHT)
    near = "left" if facing == LEFT else "right"
    # depths: arms over the torso edges when seen from front/back; near limbs over it from the side
    depth_of = {"torso": 2.0, "head": 0.5}
    for side in ("right", "left"):
        if side_view:
            depth_of[f"{side}_arm"] = 0.2 if side == near else 3.0
            depth_of[f"{side}_leg"] = 1.6 if side == near else 2.6
        else:
            depth_of[f"{side}_arm"], depth_of[f"{side}_leg"] = 1.0, 2.8
    # legs (and trousers / shorts / skirt)
    for side in ("right", "left"):
        d = depth_of[f"{side}_leg"]
        hip, knee, ankle = joints[f"{side}_hip"], joints[f"{side}_knee"], joints[f"{side}_ankle"]
        canvas.paint(_capsule(x, y, hip, knee, leg_r), SKIN_L if person.bottom_type == 2 else BOTTOM_L, d)
        canvas.paint(_capsule(x, y, knee, ankle, leg_r * 0.85), BOTTOM_L if person.bottom_type == 0 else SKIN_L, d)
        toe = (ankle[0] + (joints.get("forward", 0) * 0.05 * p), ankle[1] + 0.01 * p)
        canvas.paint(_capsule(x, y, ankle, toe, leg_r * 0.8), SHOE_L, d - 0.05)
    hip_y, sh_y, cx = joints["hip_y"], joints["shoulder_y"], joints["cx"]
    pelvis = _capsule(x, y, joints["right_hip"], joints["left_hip"], leg_r * 1.1)
    canvas.paint(pelvis, BOTTOM_L, 2.1)
    if person.bottom_type == 2:  # skirt: a trapezoid from the hips to above the knees
        t = (y - hip_y) / (0.2 * p)
        skirt = (t >= 0) & (t <= 1) & (np.abs(x - cx) <= (0.1 + 0.06 * t) * p * ws)
        canvas.paint(skirt, BOTTOM_L, 1.5)
    # torso: trapezoid from the shoulders to the hips, narrow in side view
    t = (y - sh_y) / (hip_y - sh_y)
    half = (0.125 * (1 - t) + 0.095 * t) * p * ws * (0.45 if side_view else 1.0)
    torso = (t >= -0.05) & (t <= 1.02) & (np.abs(x - cx) <= half)
    torso |= _capsule(x, y, joints["right_shoulder"], joints["left_shoulder"], arm_r * 1.2)
    canvas.paint(torso, TOP_L, depth_of["torso"])
    # arms and hands
    for side in ("right", "left"):
        d = depth_of[f"{side}_arm"]
        sh, el, wr = joints[f"{side}_shoulder"], joints[f"{side}_elbow"], joints[f"{side}_wrist"]
        canvas.paint(_capsule(x, y, sh, el, arm_r), TOP_L, d)
        canvas.paint(_capsule(x, y, el, wr, arm_r * 0.9), TOP_L if person.long_sleeves else SKIN_L, d)
        canvas.paint((x - wr[0]) ** 2 + (y - wr[1]) ** 2 <= (arm_r * 1.1) ** 2, SKIN_L, d - 0.01)
    # head and hair
    hx, hy = joints["head"]
    r = joints["head_r"]
    head = (x - hx) ** 2 + (y - hy) ** 2 <= r * r
    canvas.paint(_capsule(x, y, (hx, hy + r), (hx, sh_y), r * 0.45), SKIN_L, 0.6)  # neck
    if facing == BACK:
        hair = head
    elif facing == FRONT:
        hair = head & (y < hy - 0.35 * r)
    else:
        hair = head & ((y < hy - 0.35 * r) | ((x - hx) * joints["forward"] < -0.2 * r))
    canvas.paint(head, SKIN_L, 0.5)
    canvas.paint(hair, HAIR_L, 0.45)
    if person.long_hair:
        long = _box(x, y, (hx - 0.3 * r * joints.get("forward", 0), hy + 1.2 * r), 0.95 * r, 1.3 * r)
        canvas.paint(long, HAIR_L, 0.4 if facing == BACK else 2.5)
    # carried items
    if person.item == 1:  # backpack on the back
        if facing == BACK:
            canvas.paint(_box(x, y, (cx, sh_y + 0.14 * p), 0.09 * p * ws, 0.12 * p), ITEM_L, 0.3)
        elif facing == FRONT:
            for s in (-1, 1):
                strap = _capsule(x, y, (cx + s * 0.06 * p, sh_y), (cx + s * 0.07 * p, sh_y + 0.2 * p), 0.014 * p)
                canvas.paint(strap, ITEM_L, 1.9)
        else:
            back_x = cx - joints["forward"] * 0.085 * p * ws
            canvas.paint(_box(x, y, (back_x, sh_y + 0.14 * p), 0.05 * p, 0.12 * p), ITEM_L, 2.2)
    elif person.item == 2:  # shoulder bag at the hip on one side, strap across the chest
        side = "right" if person.bag_side > 0 else "left"
        hip = joints[f"{side}_hip"]
        if side_view:
            bag_x, bag_depth = hip[0], (0.15 if side == near else 2.9)
        else:
            outward = np.sign(hip[0] - cx) or 1.0
            bag_x, bag_depth = hip[0] + outward * 0.07 * p * ws, 0.9
        canvas.paint(_box(x, y, (bag_x, hip_y), 0.05 * p, 0.06 * p), ITEM_L, bag_depth)
        other = joints["left_shoulder" if side == "right" else "right_shoulder"]
        canvas.paint(_capsule(x, y, other, (bag_x, hip_y - 0.05 * p), 0.011 * p), ITEM_L, 1.95)
    elif person.item == 3:  # cap
        canvas.paint(head & (y < hy - 0.3 * r), HAT_L, 0.3)
        brim_dir = joints.get("forward", 0)
        brim = _capsule(x, y, (hx, hy - 0.35 * r), (hx + brim_dir * 1.3 * r, hy - 0.35 * r), 0.18 * r)
        if facing != BACK:
            canvas.paint(brim, HAT_L, 0.29)


def colourise(person: Identity, joints: dict, facing: int, label: np.ndarray, x, y,
              rng: np.random.Generator) -> np.ndarray:
    """RGB (float) of the person's pixels from the label map, with the top's pattern and soft shading."""
    lut = np.stack([np.zeros(3), person.skin, person.hair, person.top, person.bottom, person.shoes,
                    person.item_colour, person.item_colour]).astype(np.float32)
    lut = lut * rng.uniform(0.95, 1.05, (1, 3))  # small per-image colour wobble
    rgb = lut[label]
    p, cx = joints["p"], joints["cx"]
    u = (x - cx) / (0.125 * p * joints["ws"])
    v = (y - joints["shoulder_y"]) / (joints["hip_y"] - joints["shoulder_y"])
    n = person.pattern_count
    kind = person.top_pattern
    if kind == 1:
        on = np.floor(v * n) % 2 == 1
    elif kind == 2:
        on = np.floor((u + 1) * n / 2) % 2 == 1
    elif kind == 3:
        on = (np.floor(v * n) + np.floor((u + 1) * n / 2)) % 2 == 1
    elif kind == 4:
        on = v > 0.45
    elif kind == 5:  # a chest logo on the front only
        on = (np.abs(u) < 0.35) & (np.abs(v - 0.3) < 0.15) if facing == FRONT else np.zeros_like(u, bool)
    else:
        on = np.zeros_like(u, bool)
    rgb[(label == TOP_L) & on] = person.top_second
    shade = 1.0 - 0.28 * np.clip(u * (0.5 if facing in (LEFT, RIGHT) else 0.8), -1, 1) ** 2
    return rgb * shade[..., None]


def background(camera: Camera, rng: np.random.Generator, height: int, width: int, yy, xx) -> np.ndarray:
    """Wall, pillars and floor of this camera's scene, shifted per box, plus random clutter."""
    horizon = (camera.horizon + rng.uniform(-0.05, 0.05)) * height
    rows = np.arange(height, dtype=np.float32)[:, None]
    row_colour = np.where(rows >= horizon, camera.floor * (0.85 + 0.25 * (rows - horizon) / height),
                          camera.wall * (0.9 + 0.2 * rows / height)).astype(np.float32)  # (H, 3)
    period = camera.pillar_period * width * 2
    pillar = (((xx[0] + rng.uniform(0, period)) % period) < 0.25 * period)[None, :] & (rows < horizon)
    tiles = ((rows - horizon) % 9 < 1) & (rows > horizon)
    shade = 1.0 - 0.3 * pillar - 0.2 * tiles  # (H, W)
    bg = row_colour[:, None, :] * shade[..., None].astype(np.float32)
    for _ in range(rng.integers(0, 3)):  # clutter: signs, bins, other people's coats
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        hh, hw = rng.uniform(4, 0.2 * height), rng.uniform(3, 0.2 * width)
        bg[max(0, int(cy - hh)):int(cy + hh) + 1, max(0, int(cx - hw)):int(cx + hw) + 1] = _palette_colour(rng)
    return bg


def _blur(img: np.ndarray) -> np.ndarray:
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    img = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    return (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) / 4


@functools.lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


KEYPOINT_ORDER = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                  "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
                  "right_eye", "left_eye", "right_ear", "left_ear")


def render(person: Identity | None, camera: Camera, rng: np.random.Generator, height: int, width: int,
           junk: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One box: (H, W, 3) uint8 image, (H, W) bool person mask, (18, 2) keypoints (x, y), -1 missing."""
    yy, xx = _pixel_grid(height, width)
    homography = viewpoint_homography(camera, rng, height, width, junk)
    cx_img, cy_img = (c.astype(np.float32) for c in apply_homography(np.linalg.inv(homography), xx, yy))
    canvas = _Canvas((height, width))
    keypoints = np.full((NUM_KEYPOINTS, 2), -1.0, np.float32)
    img = background(camera, rng, height, width, yy, xx)
    if person is not None:
        facing = int(rng.choice(4, p=camera.facing_bias))
        joints = skeleton(person, facing, rng, height, width)
        draw_person(person, joints, facing, cx_img, cy_img, canvas)
        body = canvas.label > 0
        img = np.where(body[..., None], colourise(person, joints, facing, canvas.label, cx_img, cy_img, rng), img)
        for k, name in enumerate(KEYPOINT_ORDER):
            if name in joints:
                keypoints[k] = apply_homography(homography, *map(np.float64, joints[name]))
    mask = canvas.label > 0
    if rng.random() < 0.08:  # an occluder in front of the person: a pole, a car, another person's back
        from_left = rng.random() < 0.5
        occluder = (yy > rng.uniform(0.5, 0.8) * height) if rng.random() < 0.5 else (
            (xx < rng.uniform(0.15, 0.35) * width) if from_left else (xx > rng.uniform(0.65, 0.85) * width))
        occluder_colour = _palette_colour(rng).astype(np.float32) * (0.8 + 0.2 * yy[..., None] / height)
        img = np.where(occluder[..., None], occluder_colour, img)
        mask &= ~occluder
        kx, ky = np.rint(keypoints[:, 0]).astype(int), np.rint(keypoints[:, 1]).astype(int)
        inside = (kx >= 0) & (kx < width) & (ky >= 0) & (ky < height)
        hidden = inside & occluder[np.clip(ky, 0, height - 1), np.clip(kx, 0, width - 1)]
        keypoints[hidden] = -1
    outside = (keypoints[:, 0] < 0) | (keypoints[:, 0] > width - 1) | (keypoints[:, 1] < 0) | \
              (keypoints[:, 1] > height - 1)
    keypoints[outside] = -1
    # the camera: colour cast and exposure, gamma (through a per-channel lookup table), optics blur, sensor noise
    levels = np.arange(256, dtype=np.float32)[:, None] / 255.0
    gain = camera.gain * camera.brightness * rng.uniform(0.93, 1.07)
    table = (255.0 * np.clip(levels * gain, 0, 1) ** camera.gamma).astype(np.float32)  # (256, 3)
    quantised = np.clip(img, 0, 255).astype(np.uint8)
    img = np.stack([table[quantised[..., c], c] for c in range(3)], axis=-1)
    if camera.blur:
        img = _blur(img)
    # uniform noise with the camera's standard deviation (drawing uniforms is several times cheaper than normals)
    img = img + (camera.noise * 12**0.5) * (rng.random(img.shape, dtype=np.float32) - 0.5)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask, keypoints


def _market_name(pid: int, cam: int, seq: int, frame: int, box: int) -> str:
    return f"{'-1' if pid < 0 else f'{pid:04d}'}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"


def plan_images(ids: int, cameras: int, rng: np.random.Generator) -> list[tuple[str, int, int, str]]:
    """(split, pid, 1-based camera, kind) for every image; kind is "person", "distractor" or "junk"."""
    pids = rng.permutation(np.arange(1, ids + 1))
    train_pids, test_pids = sorted(pids[: ids // 2]), sorted(pids[ids // 2:])
    plan = []
    for pid in train_pids:
        for cam in sorted(rng.choice(cameras, size=rng.integers(2, min(cameras, 4) + 1), replace=False) + 1):
            plan += [("bounding_box_train", int(pid), int(cam), "person")] * int(rng.integers(1, 5))
    for pid in test_pids:
        for cam in sorted(rng.choice(cameras, size=rng.integers(2, min(cameras, 4) + 1), replace=False) + 1):
            # one query per camera (as Market-1501 does), at least one gallery image of each camera
            plan.append(("query", int(pid), int(cam), "person"))
            plan += [("bounding_box_test", int(pid), int(cam), "person")] * int(rng.integers(1, 4))
    extras = max(2, ids // 8)
    plan += [("bounding_box_test", 0, int(rng.integers(1, cameras + 1)), "distractor") for _ in range(extras)]
    plan += [("bounding_box_test", -1, int(rng.integers(1, cameras + 1)), "junk") for _ in range(extras)]
    return plan


def generate(out: str | os.PathLike, ids: int = 200, cameras: int = 6, domain: str = "a", seed: int = 0,
             height: int = 128, width: int = 64) -> dict:
    """Write the dataset into `out` (which must not exist or be empty) and return its parameters."""
    if ids < 4:
        raise ValueError(f"generate: ids must be at least 4 (half train, half test), got {ids}")
    if not 2 <= cameras <= 9:
        raise ValueError(f"generate: cameras must be between 2 and 9 (Market names hold one digit), got {cameras}")
    if domain not in ("a", "b"):
        raise ValueError(f"generate: domain must be 'a' or 'b', got {domain!r}")
    if height < 32 or width < 16:
        raise ValueError(f"generate: image size must be at least 32x16, got {height}x{width}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"generate: output folder {out} is not empty")
    domain_code = 0 if domain == "a" else 1
    root_seq = np.random.SeedSequence([seed, domain_code])
    layout_rng, camera_rng, extra_rng = (np.random.default_rng(s) for s in root_seq.spawn(3))
    cams = [make_camera(camera_rng, domain) for _ in range(cameras)]
    people = {pid: make_identity(np.random.default_rng([seed, domain_code, 7, pid])) for pid in range(1, ids + 1)}
    plan = plan_images(ids, cameras, layout_rng)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
    frame = {cam: int(layout_rng.integers(100, 900)) for cam in range(1, cameras + 1)}
    poses = {}
    image_seeds = root_seq.spawn(len(plan) + 1)[1:]
    for (split, pid, cam, kind), image_seed in zip(plan, image_seeds):
        rng = np.random.default_rng(image_seed)
        person = people.get(pid) if kind == "person" else make_identity(extra_rng)
        if kind == "junk" and rng.random() < 0.3:
            person = None  # some junk boxes hold only background
        img, mask, keypoints = render(person, cams[cam - 1], rng, height, width, junk=kind == "junk")
        frame[cam] += int(rng.integers(1, 60))
        name = _market_name(pid, cam, 1 + frame[cam] // 25000, frame[cam], int(rng.integers(1, 4)))
        Image.fromarray(img).save(out / split / name, quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / split / (name[:-4] + ".png"))
        poses[name] = keypoints
    write_keypoints_csv(out / "annotations.csv", poses)
    params = {"format_version": FORMAT_VERSION, "ids": ids, "cameras": cameras, "domain": domain, "seed": seed,
              "height": height, "width": width, "images": len(plan)}
    (out / "synthetic.json").write_text(json.dumps(params, indent=2) + "\n")
    return params


def generate_atomically(out: str | os.PathLike, **params) -> Path:
    """Generate into a temporary sibling folder and rename it to `out`, so no reader ever sees half a dataset.

    If another process finished first, its copy is kept and ours discarded.
    """
    out = Path(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder given as the destination: replace it
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        generate(tmp, **params)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "synthetic.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reidfast.data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty, unless --force)")
    parser.add_argument("--ids", type=int, default=200, help="identities, half train and half test (default 200)")
    parser.add_argument("--cameras", type=int, default=6, help="cameras, 2-9 (default 6)")
    parser.add_argument("--domain", choices=("a", "b"), default="a", help="camera network / people (default a)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--force", action="store_true",
                        help="replace an existing synthetic dataset at --out (a folder holding synthetic.json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file, not a folder")
    replace = out.exists() and any(out.iterdir())
    if replace and not args.force:
        parser.error(f"--out {out} is not empty (pass --force to replace the synthetic dataset there)")
    if replace and not (out / "synthetic.json").is_file():
        # --force deletes a folder: only one this command wrote, never e.g. a real dataset given by mistake
        parser.error(f"--force: {out} is not a synthetic dataset (no synthetic.json); not deleting it")
    start = time.perf_counter()
    # the new dataset is written beside the old one, which is removed only once the new one is complete
    target = out.with_name(f".{out.name}.replacement") if replace else out
    if replace and target.exists():  # left by an attempt stopped before its rename: possibly other parameters
        shutil.rmtree(target)
    try:
        generate_atomically(target, ids=args.ids, cameras=args.cameras, domain=args.domain, seed=args.seed,
                            height=args.height, width=args.width)
    except ValueError as exc:
        parser.error(str(exc))
    if replace:
        shutil.rmtree(out)
        os.rename(target, out)
    written = json.loads((out / "synthetic.json").read_text())
    print(f"wrote {written['images']} images to {out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
