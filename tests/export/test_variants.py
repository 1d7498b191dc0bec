"""Static facts of the variants: architecture sizes against the paper, torchvision's V1 transforms."""

from __future__ import annotations

import pytest

from models.architectures import build_classifier, imagenet_categories, parameter_count, preprocessing
from models.variants import ALL, LITE_MEAN, LITE_STD, UnknownVariant, expand, get_variant

# EfficientNet paper, Table 2 (millions of parameters).
PAPER_PARAMS_M = {"b0": 5.3, "b1": 7.8, "b2": 9.2, "b3": 12, "b4": 19, "b5": 30, "b6": 43, "b7": 66}
# torchvision IMAGENET1K_V1 eval transforms: (resize, crop).
RESOLUTIONS = {
    "b0": (256, 224), "b1": (256, 240), "b2": (288, 288), "b3": (320, 300),
    "b4": (384, 380), "b5": (456, 456), "b6": (528, 528), "b7": (600, 600),
    # Lite: the reference evaluation's crop / (crop + 32) centre crop.
    "lite0": (256, 224), "lite1": (272, 240), "lite2": (292, 260),
}  # fmt: skip
# Parameter counts of the published EfficientNet-Lite checkpoints (1000 classes).
LITE_PARAMS = {"lite0": 4_652_008, "lite1": 5_416_680, "lite2": 6_092_072}


@pytest.mark.parametrize("key", list(PAPER_PARAMS_M))
def test_parameter_count_is_within_2_percent_of_the_paper(key: str) -> None:
    params = parameter_count(build_classifier(get_variant(key)))
    paper = PAPER_PARAMS_M[key] * 1e6
    assert abs(params - paper) / paper < 0.02, f"{key}: {params} vs paper {paper:.0f}"


@pytest.mark.parametrize("key", list(LITE_PARAMS))
def test_lite_models_have_their_published_size(key: str) -> None:
    assert parameter_count(build_classifier(get_variant(key))) == LITE_PARAMS[key]


@pytest.mark.parametrize("key", ALL)
def test_preprocessing_follows_torchvision_v1(key: str) -> None:
    pre = preprocessing(get_variant(key))
    assert (pre.resize_size, pre.crop_size) == RESOLUTIONS[key]
    assert pre.interpolation == "bicubic"
    if key.startswith("lite"):
        assert (pre.mean, pre.std) == (LITE_MEAN, LITE_STD)
    else:
        assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)


def test_imagenet_categories_come_without_download() -> None:
    categories = imagenet_categories(get_variant("b0"))
    assert len(categories) == 1000
    assert categories[281] == "tabby" and categories[967] == "espresso"


def test_all_expands_to_the_eleven_variants_in_order() -> None:
    assert [v.key for v in expand(["all"])] == [
        "b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "lite0", "lite1", "lite2"
    ]  # fmt: skip
    assert [v.key for v in expand(["lite0", "b0", "b0"])] == ["b0", "lite0"]


def test_unknown_variant_names_the_choices() -> None:
    with pytest.raises(UnknownVariant, match="unknown variant 'b9'.*lite0"):
        expand(["b9"])


# torchvision IMAGENET1K_V1 of EfficientNetV2: (resize, crop, interpolation, mean), and acc@1.
V2_TRANSFORMS = {
    "v2-s": (384, 384, "bilinear", (0.485, 0.456, 0.406), 84.228),
    "v2-m": (480, 480, "bilinear", (0.485, 0.456, 0.406), 85.112),
    "v2-l": (480, 480, "bicubic", (0.5, 0.5, 0.5), 85.808),
}


@pytest.mark.parametrize("key", list(V2_TRANSFORMS))
def test_v2_members_follow_torchvision_and_declare_its_accuracy(key: str) -> None:
    from models.accuracy import declared_accuracy
    from service.model_spec import WeightsProvenance

    resize, crop, interpolation, mean, top1 = V2_TRANSFORMS[key]
    pre = preprocessing(get_variant(key))
    assert (pre.resize_size, pre.crop_size) == (resize, crop)
    assert (pre.interpolation, pre.mean) == (interpolation, mean)
    imagenet = WeightsProvenance(kind="imagenet", source="torchvision", sha256="0" * 64)
    accuracy = declared_accuracy(get_variant(key), imagenet, "fp32")
    assert accuracy is not None and accuracy.imagenet_top1 == pytest.approx(top1)


def test_v2_members_are_known_but_not_part_of_all() -> None:
    assert [v.key for v in expand(["all"])] == list(ALL) and not any(k.startswith("v2") for k in ALL)
    assert [v.key for v in expand(["v2-s", "b0"])] == ["b0", "v2-s"]
    with pytest.raises(UnknownVariant, match="v2-l"):
        get_variant("v3")
