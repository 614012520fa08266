"""DistillLoss: the three terms, their switches, the feature reductions, fp32, errors, shipped configs."""

import pytest
import torch
from helpers.paths import CONF
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bksdm.distill.losses import DistillLoss


def tensors(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student, target, teacher = (torch.randn(2, 4, 8, 8, generator=g).to(dtype) for _ in range(3))
    features = [
        (
            f"f{i}",
            torch.randn(2, 8, 4, 4, generator=g).to(dtype),
            3 * torch.randn(2, 8, 4, 4, generator=g).to(dtype),
        )
        for i in range(2)
    ]
    return student, target, teacher, features


def mse(a, b):
    return ((a.float() - b.float()) ** 2).mean()


def test_kd_full_is_the_weighted_sum_of_plain_mses():
    student, target, teacher, features = tensors()
    loss, terms = DistillLoss(w_task=1.0, w_out=0.5, w_feat=2.0)(student, target, teacher, features)
    feature_sum = mse(features[0][1], features[0][2]) + mse(features[1][1], features[1][2])
    torch.testing.assert_close(terms["loss_task"], mse(student, target))
    torch.testing.assert_close(terms["loss_kd_out"], mse(student, teacher))
    torch.testing.assert_close(terms["loss_kd_feat"], feature_sum)
    torch.testing.assert_close(terms["kd_feat/f1"], mse(features[1][1], features[1][2]))
    torch.testing.assert_close(loss, mse(student, target) + 0.5 * mse(student, teacher) + 2.0 * feature_sum)


def test_normalized_features_divide_by_the_teacher_mean_square():
    student, target, teacher, features = tensors()
    _, terms = DistillLoss(feature_reduction="normalized")(student, target, teacher, features)
    expected = sum(mse(s, t) / t.pow(2).mean() for _, s, t in features)
    torch.testing.assert_close(terms["loss_kd_feat"], expected)


@pytest.mark.parametrize(
    ("weights", "present", "needs_teacher", "needs_features"),
    [
        ((1, 1, 1), {"loss_task", "loss_kd_out", "loss_kd_feat"}, True, True),
        ((1, 1, 0), {"loss_task", "loss_kd_out"}, True, False),
        ((1, 0, 1), {"loss_task", "loss_kd_feat"}, True, True),
        ((1, 0, 0), {"loss_task"}, False, False),
        ((0, 1, 0), {"loss_kd_out"}, True, False),
    ],
)
def test_a_zero_weight_switches_its_term_and_its_work_off(weights, present, needs_teacher, needs_features):
    loss_fn = DistillLoss(*weights)
    assert (loss_fn.needs_teacher, loss_fn.needs_features) == (needs_teacher, needs_features)
    student, target, teacher, features = tensors()
    _, terms = loss_fn(
        student,
        target if weights[0] else None,
        teacher if needs_teacher else None,
        features if needs_features else (),
    )
    assert {k for k in terms if k.startswith("loss_")} == present


def test_low_precision_inputs_give_an_fp32_loss_with_gradients():
    student, target, teacher, features = tensors(dtype=torch.bfloat16)
    student.requires_grad_(True)
    loss, _ = DistillLoss()(student, target, teacher, features)
    assert loss.dtype == torch.float32
    loss.backward()
    assert student.grad is not None and teacher.grad is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"w_out": -1.0}, r"loss\.w_out must be a number >= 0, got -1\.0"),
        ({"w_task": 0, "w_out": 0, "w_feat": 0}, "all 0"),
        ({"feature_reduction": "mean"}, r"feature_reduction='mean': accepted are \['sum', 'normalized'\]"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillLoss(**kwargs)


def test_missing_inputs_for_enabled_terms_are_errors():
    student, target, teacher, _ = tensors()
    with pytest.raises(ValueError, match=r"teacher_pred is required when loss\.w_out > 0"):
        DistillLoss()(student, target, None)
    with pytest.raises(ValueError, match="needs feature pairs"):
        DistillLoss()(student, target, teacher, [])


@pytest.mark.parametrize(
    ("name", "weights"),
    [("kd_full", (1, 1, 1)), ("kd_out", (1, 1, 0)), ("kd_feat", (1, 0, 1)), ("task", (1, 0, 0))],
)
def test_shipped_loss_configs(name, weights):
    loss_fn = instantiate(OmegaConf.load(CONF / "loss" / f"{name}.yaml"))
    assert (loss_fn.w_task, loss_fn.w_out, loss_fn.w_feat) == weights
    assert loss_fn.feature_reduction == "sum"
