"""The architectures as params.yaml builds them, the under-5k family, and the custom Dropout."""

from __future__ import annotations

import pytest
import torch

from mnist_repro.core.config import load_params
from mnist_repro.core.models import ConvBlock, Dropout, build_model, count_parameters
from mnist_repro.compare.reference import load_reference

# The published table (reference/variants.md, reference/published.json), pinned exactly.
PUBLISHED_PARAMS = {
    "basic_setup": 6_379_786,
    "skeleton": 4_572,
    "batch_norm": 5_088,
    "dropout": 5_088,
    "fc_after_gap": 6_124,
    "augmentation": 6_124,
    "lr_scheduler": 6_720,
}
# Variants beyond the published seven: no published count, so pinned here.
OUR_PARAMS = {
    "under_5k": 4_872,
}
# Every width the under_5k search tried (metrics/search/under_5k.json), by the name its record uses.
COMPACT_PARAMS = {"c6-8-10-12-14": 4_038, "c8-8-10-12-14": 4_204, "c8-8-12-12-16": 4_808,
                  "c6-8-8-10-12-14": 4_630, "c8-8-8-10-12-14": 4_796, "c6-8-10-10-12-14": 4_958}
SEPARABLE_PARAMS = {"s16-16-32-32-32": 4_400, "s16-24-32-32-32": 4_872, "s16-16-24-24-32-32": 4_768}


@pytest.fixture(scope="module")
def variants(repo_root):
    return load_params(repo_root / "params.yaml").variants


def test_params_yaml_lists_the_variants_in_order(variants):
    assert list(variants) == list(PUBLISHED_PARAMS) + list(OUR_PARAMS)
    assert variants["augmentation"].model == "fc_after_gap"


@pytest.mark.parametrize("name", PUBLISHED_PARAMS)
def test_parameter_count_matches_published(variants, name, repo_root):
    v = variants[name]
    model = build_model(v.model, v.dropout)
    assert count_parameters(model) == PUBLISHED_PARAMS[name]
    # the reference file the comparison table reads agrees too
    assert load_reference(repo_root / "reference" / "published.json").get(name).params == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", OUR_PARAMS)
def test_parameter_count_of_our_variants(variants, name):
    v = variants[name]
    assert count_parameters(build_model(v.model, v.dropout)) == OUR_PARAMS[name] <= 5_000


def test_every_searched_width_builds_under_5k_parameters():
    built = {name: count_parameters(build_model(name)) for name in {**COMPACT_PARAMS, **SEPARABLE_PARAMS}}
    assert built == {**COMPACT_PARAMS, **SEPARABLE_PARAMS}


def test_every_model_of_the_search_record_builds_with_its_recorded_count(repo_root):
    import json

    record = json.loads((repo_root / "metrics" / "search" / "under_5k.json").read_text())
    recorded = {e["model"]: e["params"] for e in record["experiments"]}
    assert set(recorded) - set(PUBLISHED_PARAMS) <= {**COMPACT_PARAMS, **SEPARABLE_PARAMS}.keys()
    assert {name: count_parameters(build_model(name)) for name in recorded} == recorded


def test_a_family_name_spells_its_widths():
    from mnist_repro.core.models import MODELS, compact, separable
    for name, family, widths in (("c8-8-12-12-16", compact, (8, 8, 12, 12, 16)),
                                 ("s16-16-24-24-32-32", separable, (16, 16, 24, 24, 32, 32)),
                                 ("c4-4-4-4-4-4-4", compact, (4,) * 7)):  # never searched: any width builds
        assert name in MODELS
        assert repr(build_model(name, 0.03)) == repr(family(widths, 0.03))
    # iterating lists the named architectures; the families are open-ended
    assert list(MODELS) == ["basic_setup", "skeleton", "batch_norm", "dropout", "fc_after_gap", "lr_scheduler"]


@pytest.mark.parametrize("name, reason", [
    ("resnet", "unknown model 'resnet'; choose one of basic_setup, skeleton, batch_norm, dropout, fc_after_gap, "
               "lr_scheduler, or a family model: c<widths> (compact) or s<widths> (separable) with five to seven "
               "conv widths, such as c8-8-12-12-16"),
    ("x8-8-12-12-16", "unknown model"), ("c8-8-12-12-", "unknown model"), ("c08-8-12-12-16", "unknown model"),
    ("c8-8-12-16", "model 'c8-8-12-16': 4 conv widths; compact takes 5 to 7 (two before the pool, three to five "
                   "after)"),
    ("s8-8-8-8-8-8-8-8", "model 's8-8-8-8-8-8-8-8': 8 conv widths; separable takes 5 to 7"),
])
def test_an_unbuildable_name_gets_one_line_saying_why(name, reason):
    from mnist_repro.core.models import MODELS, unbuildable
    assert unbuildable(name).startswith(reason) and "\n" not in unbuildable(name)
    assert name not in MODELS
    with pytest.raises(ValueError) as info:
        build_model(name)
    assert str(info.value) == unbuildable(name)


def test_separable_splits_each_3x3_after_the_first_into_depthwise_and_1x1():
    from mnist_repro.core.models import separable
    model = separable((16, 16, 32, 32, 32), 0.0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # the first conv, then (depthwise 3x3, 1x1) per further conv, then the "FC"
    assert [(c.kernel_size[0], c.groups) for c in convs] == [(3, 1)] + [(3, 16), (1, 1)] * 2 + [(3, 32), (1, 1)] * 2 + [(1, 1)]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="three to five after"):
        separable((16, 16, 32, 32), 0.0)


def test_compact_maps_shrink_by_two_per_conv_after_the_pool():
    from mnist_repro.core.models import compact
    five, six = compact((8, 8, 12, 12, 16), 0.0), compact((6, 8, 10, 10, 12, 14), 0.0)
    assert (five[-3].kernel_size, six[-3].kernel_size) == (6, 4)  # the GAP covers the whole last map
    assert six(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="three to five after"):
        compact((8, 8, 12, 16), 0.0)


@pytest.mark.parametrize("name", [*PUBLISHED_PARAMS, *OUR_PARAMS])
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "eval"])
def test_forward_gives_log_probabilities(variants, name, train_mode):
    v = variants[name]
    torch.manual_seed(0)
    model = build_model(v.model, v.dropout).train(train_mode)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    assert (out <= 0).all()
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4), atol=1e-5, rtol=0)


def test_forward_in_channels_last(variants):
    v = variants["lr_scheduler"]
    model = build_model(v.model, v.dropout).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="resnet"):
        build_model("resnet")


def test_convblock_post_op_order_is_data():
    block = ConvBlock(1, 8, post="RBD", dropout=0.1)
    kinds = [type(m).__name__ for m in block]
    assert kinds == ["Conv2d", "ReLU", "BatchNorm2d", "Dropout"]
    assert isinstance(block[3], Dropout) and block[3].p == 0.1


@pytest.mark.parametrize("post", ["BX", "r", "BRD "])
def test_convblock_rejects_unknown_post_op(post):
    with pytest.raises(ValueError, match="unknown letter"):
        ConvBlock(1, 8, post=post)


# --- the fast Dropout -------------------------------------------------------------


@pytest.mark.parametrize("p", [0.03, 0.1, 0.5])
def test_dropout_keeps_one_minus_p_and_preserves_the_mean(p):
    torch.manual_seed(0)
    drop = Dropout(p).train()
    x = torch.ones(1_000_000)
    out = drop(x)
    cut = round(p * 65536)
    scale = 65536 / (65536 - cut)
    kept = out != 0
    # Binomial standard deviation of the kept fraction is <= 5e-4 here: 6 sigma is 3e-3.
    assert abs(kept.float().mean().item() - (1 - p)) < 3e-3
    # Kept activations scaled by 1/(1-p) (p rounded to a multiple of 1/65536), the rest zero.
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], scale))
    assert abs(scale - 1 / (1 - p)) < 1e-4
    assert abs(out.mean().item() - 1.0) < 4e-3


def test_dropout_mask_is_random_per_element():
    """Four 16-bit draws per 64-bit word: neighbours must still be independent."""
    torch.manual_seed(0)
    out = Dropout(0.5).train()(torch.ones(400_000))
    kept = (out != 0).view(-1, 4).float()
    # Each of the four lanes ~1/2 and the lanes uncorrelated (P(both kept) ~ 1/4).
    torch.testing.assert_close(kept.mean(0), torch.full((4,), 0.5), atol=6e-3, rtol=0)
    both = (kept[:, 0] * kept[:, 1]).mean().item()
    assert abs(both - 0.25) < 6e-3
    # And two calls draw different masks.
    assert not torch.equal(out, Dropout(0.5).train()(torch.ones(400_000)))


def test_dropout_is_identity_in_eval_mode_and_at_p0():
    x = torch.randn(8, 16, 5, 5)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


@pytest.mark.parametrize("shape", [(8, 16, 12, 12), (3, 5, 7, 7)])  # 3*5*7*7 is not a multiple of 4
def test_dropout_preserves_channels_last(shape):
    torch.manual_seed(0)
    x = torch.rand(shape).contiguous(memory_format=torch.channels_last) + 0.5
    out = Dropout(0.25).train()(x)
    assert out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert 0.5 < kept.float().mean().item() < 0.95
    # Contiguous (NCHW) input stays contiguous too.
    assert Dropout(0.25).train()(x.contiguous()).is_contiguous()


def test_dropout_gradient_flows_through_kept_units_only():
    torch.manual_seed(0)
    x = torch.ones(1000, requires_grad=True)
    out = Dropout(0.2).train()(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, out.detach())


# sha256 (first 16 hex digits) of each variant's module tree and its initial weights after
# torch.manual_seed(1), as built when its committed results were made. Editing models.py
# (adding a variant, say) makes `dvc status` list every training stage; while these hold,
# the builders of those results are unchanged and `dvc commit <stage>` records that
# instead of retraining (README "Add a variant"). A changed digest means a real change:
# rerun the variant.
BUILT_AS_COMMITTED = {
    "basic_setup": "3981d85b0fc23b9c", "skeleton": "7cac8f4ce1eeceba", "batch_norm": "c6c3dd924601ebba",
    "dropout": "0b433e37a77c77db", "fc_after_gap": "dec98d11a5fc5082", "augmentation": "dec98d11a5fc5082",
    "lr_scheduler": "f0aa6ffa21e83ae0", "under_5k": "0e6edd6b22a594e9",
}


def model_digest(model: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256(repr(model).encode())
    for key, tensor in model.state_dict().items():
        h.update(key.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", BUILT_AS_COMMITTED)
def test_builders_of_committed_results_are_unchanged(variants, name):
    torch.manual_seed(1)
    v = variants[name]
    assert model_digest(build_model(v.model, v.dropout)) == BUILT_AS_COMMITTED[name]
