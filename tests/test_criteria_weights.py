"""bn-scale ranks by BatchNorm scales, and says where it cannot."""
from __future__ import annotations

import numpy as np
import pytest
from criteria_helpers import group_of, normal, removed, stacked_model
from criteria_models import conv_bn_relu_conv, initializers

import spa
from spa.errors import SpaError


def test_bn_scale_removes_the_smallest_absolute_gamma(tmp_path):
    rng = np.random.default_rng(7)
    gamma = np.array([0.9, -1.2, -0.05, 0.3, 0.08], np.float32)  # smallest |gamma|: channel 2
    bn = dict(scale=gamma, shift=normal(rng, 5, scale=0.1), mean=normal(rng, 5, scale=0.1),
              var=np.full(5, 1.0, np.float32))
    model = conv_bn_relu_conv(normal(rng, 5, 1, 3, 3), normal(rng, 5), bn, normal(rng, 2, 5, 1, 1), None)
    result = spa.prune(model, 0.2, criterion="bn-scale", round_to=1)
    assert removed(result) == [2]
    np.testing.assert_allclose(result.report["groups"][0]["scores"], np.abs(gamma) / np.abs(gamma).mean(),
                               rtol=1e-5)
    assert removed(spa.prune(model, 0.4, criterion="bn-scale", round_to=1)) == [2, 4]


def test_bn_scale_keeps_groups_without_batchnorm_whole_and_says_why():
    model = stacked_model(batch_norm=True)  # bn2 after conv2; conv1's channels meet no BatchNorm
    result = spa.prune(model, 0.4, criterion="bn-scale", round_to=1)
    conv1, conv2 = group_of(result, "conv1"), group_of(result, "conv2")
    assert conv1["removed"] == [] and not conv1["prunable"] and "scores" not in conv1
    assert conv1["reason"] == "bn-scale: no BatchNormalization scale in this group"
    gamma = np.abs(initializers(model)["bn2_scale"])
    assert conv2["removed"] == sorted(np.argsort(gamma)[:2].tolist())


def test_bn_scale_without_any_batchnorm_is_refused_in_one_line():
    """No group can be scored: a one-line SpaError naming the reason, never a crash."""
    with pytest.raises(SpaError, match=r"^criterion 'bn-scale' can score none of the 2 prunable groups "
                                       r"\(no BatchNormalization scale in this group\)$"):
        spa.prune(stacked_model(), 0.5, criterion="bn-scale", round_to=1)
