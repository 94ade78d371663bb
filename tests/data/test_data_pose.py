import math

import numpy as np
import pytest
import torch

from reidfast.data import (FLIP_PERMUTATION, OPENPOSE_18, flip_heatmaps, flip_keypoints, keypoints_to_heatmaps,
                           read_fdgan_pose, read_keypoints_csv, write_keypoints_csv)


def random_keypoints(batch, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(batch, 18, 2, generator=g) * torch.tensor([width - 1.0, height - 1.0])
    kp[0, 3] = -1  # a missing point
    kp[1, 7, 1] = -1  # one coordinate missing is missing too
    return kp


def test_heatmaps_match_the_per_pixel_formula():
    height, width = 12, 7
    kp = random_keypoints(2, height, width)
    sigma = torch.tensor([1.5, 3.0])
    maps = keypoints_to_heatmaps(kp, height, width, sigma)
    assert maps.shape == (2, 18, height, width)
    expected = torch.zeros_like(maps)
    for b in range(2):
        for k in range(18):
            x, y = kp[b, k].tolist()
            if x < 0 or y < 0:
                continue
            for row in range(height):
                for col in range(width):
                    expected[b, k, row, col] = np.exp(-((col - x) ** 2 + (row - y) ** 2) / (2 * sigma[b].item() ** 2))
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    assert maps[0, 3].abs().sum() == 0 and maps[1, 7].abs().sum() == 0


def test_heatmap_peak_is_one_at_an_integer_keypoint_and_sigma_is_checked():
    kp = torch.full((1, 18, 2), -1.0)
    kp[0, 0] = torch.tensor([4.0, 9.0])
    maps = keypoints_to_heatmaps(kp, 16, 8, 2.0)
    assert maps[0, 0, 9, 4] == 1.0 and maps[0, 0].max() == 1.0 and maps[0, 1:].sum() == 0
    with pytest.raises(ValueError, match=r"sigma must be a number or shape \(1,\), got shape \(2,\)"):
        keypoints_to_heatmaps(kp, 16, 8, torch.tensor([1.0, 2.0]))
    for bad in (0.0, -2.0, float("nan"), torch.tensor([-1.0]), torch.tensor(0.0), torch.tensor([math.nan])):
        with pytest.raises(ValueError, match="sigma must be positive"):
            keypoints_to_heatmaps(kp, 16, 8, bad)
    # A per-sample tensor gives the same maps as the number.
    torch.testing.assert_close(keypoints_to_heatmaps(kp, 16, 8, torch.tensor([2.0]), check_sigma=False), maps)
    with pytest.raises(ValueError, match=r"18, 2\)"):
        keypoints_to_heatmaps(torch.zeros(1, 17, 2), 16, 8)


def test_flip_swaps_left_and_right_and_matches_flipping_heatmaps():
    height, width = 16, 9
    kp = random_keypoints(2, height, width).round()
    flipped = flip_keypoints(kp, width)
    right_shoulder, left_shoulder = OPENPOSE_18.index("right_shoulder"), OPENPOSE_18.index("left_shoulder")
    assert flipped[0, left_shoulder, 0] == width - 1 - kp[0, right_shoulder, 0]
    assert flipped[0, OPENPOSE_18.index("nose"), 1] == kp[0, 0, 1]
    missing_as_minus_one = torch.where((kp < 0).any(-1, keepdim=True), -1.0, kp)  # (x, -1) is reported (-1, -1)
    torch.testing.assert_close(flip_keypoints(flipped, width), missing_as_minus_one)  # an involution
    assert (flipped[0, FLIP_PERMUTATION[3]] == -1).all()  # the missing point moved with its channel
    maps = keypoints_to_heatmaps(kp, height, width, 2.0)
    torch.testing.assert_close(keypoints_to_heatmaps(flipped, height, width, 2.0), flip_heatmaps(maps))
    # the no-swap option only mirrors, as flipping pose maps with np.flip does
    plain = flip_keypoints(kp, width, swap_left_right=False)
    torch.testing.assert_close(keypoints_to_heatmaps(plain, height, width, 2.0),
                               flip_heatmaps(maps, swap_left_right=False))
    assert plain[0, right_shoulder, 0] == width - 1 - kp[0, right_shoulder, 0]
    np.testing.assert_allclose(flip_keypoints(kp.numpy(), width), flipped.numpy())


def test_csv_round_trip_and_errors(tmp_path):
    kp = np.arange(36, dtype=np.float32).reshape(18, 2)
    kp[5] = -1
    path = tmp_path / "annotations.csv"
    write_keypoints_csv(path, {"0002_c1s1_000451_03.jpg": kp})
    text = path.read_text().splitlines()
    assert text[0] == "name:keypoints_y:keypoints_x"
    assert text[1].startswith("0002_c1s1_000451_03.jpg:[1, 3, 5,")  # y list first
    np.testing.assert_array_equal(read_keypoints_csv(path)["0002_c1s1_000451_03.jpg"], kp)
    path.write_text("name:keypoints_y:keypoints_x\na.jpg:[1, 2]:[3, 4]\n")
    with pytest.raises(ValueError, match="line 2"):
        read_keypoints_csv(path)
    path.write_text("name,x,y\n")
    with pytest.raises(ValueError, match="header"):
        read_keypoints_csv(path)


def test_fdgan_pose_file_is_row_then_column(tmp_path):
    lines = [f"{10 + k} {20 + k}" for k in range(18)]
    lines[2] = "-1 -1"
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    kp = read_fdgan_pose(tmp_path / "p.txt")
    assert kp.shape == (18, 2) and tuple(kp[0]) == (20.0, 10.0) and tuple(kp[2]) == (-1.0, -1.0)
    (tmp_path / "bad.txt").write_text("1 2\n3 4\n")
    with pytest.raises(ValueError, match="18 lines"):
        read_fdgan_pose(tmp_path / "bad.txt")


@pytest.mark.gpu
def test_heatmaps_on_a_gpu_do_not_wait_for_it(no_gpu_wait):
    # FD-GAN draws a bandwidth per image on the GPU at every step: a number, or a device sigma with check_sigma=False,
    # must not synchronize.
    kp = random_keypoints(4, 32, 16).cuda()
    sigma = torch.tensor([1.0, 2.0, 3.0, 2.0], device="cuda")
    with no_gpu_wait():
        by_number = keypoints_to_heatmaps(kp, 32, 16, 2.0)
        per_sample = keypoints_to_heatmaps(kp, 32, 16, sigma, check_sigma=False)
    torch.testing.assert_close(per_sample[1], by_number[1])
    torch.testing.assert_close(per_sample.cpu(), keypoints_to_heatmaps(kp.cpu(), 32, 16, sigma.cpu()))
