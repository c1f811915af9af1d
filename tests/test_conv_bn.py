"""bench.studies.conv_bn: the README's Conv→BatchNorm case (a flat conv bias) on a short run."""

from __future__ import annotations

import math

import pytest
import torch

from bench.cli import run
from bench.studies import conv_bn


def test_the_conv_bias_is_dropped_as_flat_and_never_moves():
    torch.manual_seed(0)
    start = conv_bn.conv_bn_cnn()[0].bias.detach().abs().max()
    found = conv_bn.measure("partitioned_newton", {"lr": 0.03, "update_every": 2, "warmup": 1},
                            steps=12, seed=0)  # fmt: skip
    assert math.isfinite(found["loss"]) and found["loss"] < math.log(10)
    assert found["flat_counts"].get("0.bias", 0) >= 1
    assert set(found["flat_counts"]) == {"0.bias"}  # only the bias in front of the BatchNorm
    assert abs(found["max_abs_conv_bias"] - float(start)) < 1e-6  # η = 0: it never moves


def test_a_bad_option_is_one_message(capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's: one line, status 2
        run(conv_bn.main, ["--steps", "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "Traceback" not in err
