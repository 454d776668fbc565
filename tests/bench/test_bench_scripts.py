"""The report parts of the bench scripts, on made-up records (the runs themselves are not tests)."""

import numpy as np

from bench import search_precision_agreement, searched_vs_random


def test_moved_correlation_is_pearson_of_the_moves_over_the_mask():
    rng = np.random.default_rng(0)
    a0 = rng.normal(size=(4, 3))
    da, db = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    mask = np.ones((4, 3), bool)
    mask[0] = False
    expected = np.corrcoef(da[mask], db[mask])[0, 1]
    got = search_precision_agreement.moved_correlation(a0 + da, a0, a0 + db, a0, mask)
    assert abs(got - expected) < 1e-12
    assert abs(search_precision_agreement.moved_correlation(a0 + 2 * da, a0, a0 + da, a0) - 1.0) < 1e-12


def test_results_table_has_every_run_the_random_group_and_per_class_iou():
    cfg = searched_vs_random.BenchConfig(output_dir="x", num_random=2, seeds=(0, 1))
    def rec(name, seed, miou, bg):
        return {"name": name, "seed": seed, "miou": miou, "params": 1000, "train_seconds": 10.0,
                "per_class_iou": {"background": bg, "line": 0.0}}
    records = [rec("searched", 0, 0.5, 0.9), rec("searched", 1, 0.7, 0.7),
               rec("random_0", 0, 0.4, 0.8), rec("random_0", 1, 0.4, 0.8),
               rec("random_1", 0, 0.2, 0.6), rec("random_1", 1, 0.2, 0.6)]
    kinds = {"searched": "searched", "random_0": "random", "random_1": "random"}
    summary = searched_vs_random.summarize(cfg, records, kinds, {"seconds": 1.0, "steps": 2, "verdict": "weak"})
    group = summary["random_group"]
    assert group["n"] == 2 and abs(group["mean"] - 0.3) < 1e-12 and abs(group["std"] - 0.2 / np.sqrt(2)) < 1e-12
    searched = summary["architectures"][0]
    assert abs(searched["miou"] - 0.6) < 1e-12
    assert searched["per_class_iou"] == {"background": 0.8, "line": 0.0}
    text = searched_vs_random.results_markdown(summary)
    assert "| searched | searched | 0.6000 | 0.5000, 0.7000 |" in text
    assert "| searched | 0.800 | 0.000 |" in text
    assert "mIoU 0.3000 +- 0.1414" in text
    assert searched_vs_random.results_png(summary)[:8] == b"\x89PNG\r\n\x1a\n"


def _small_searched_model():
    import tensorflow as tf

    from nas_deeplab import architecture
    from nas_deeplab.model.deeplab import ModelOptions, build_deeplab
    arch = architecture.Architecture(("separable_5x5_2", "atrous_3x3", "separable_3x3_2", "max_pool_3x3"),
                                     (1, 0, 2, 0), (0, 1, 2, 1), 2, name="searched")
    model = build_deeplab(arch, ModelOptions(num_classes=3, aspp_convs_filters=8, decoder_filters=8))
    rng = np.random.default_rng(1)
    for v in model.variables:   # non-trivial BN statistics, so the BNs do not hide a scale error
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
        elif "moving_mean" in v.path or "beta" in v.path:
            v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))
    image = tf.constant(rng.uniform(0, 255, (1, 65, 65, 3)), tf.float32)
    return model, image


def test_rounding_draw_keeps_the_float32_function_and_re_rounds_the_16_bit_kernels():
    import tensorflow as tf

    from bench import export_precision_agreement as epa
    from nas_deeplab.model import layers
    model, image = _small_searched_model()
    seps = [l for l in model._flatten_layers() if isinstance(l, layers.SeparableConv2D)]
    before = {l.path: (l.depthwise_kernel.numpy(), l.pointwise_kernel.numpy()) for l in seps}
    logits = model(image, training=False).numpy()
    assert epa.rounding_draw(model, np.random.default_rng(0)) == len(seps) > 0
    after = model(image, training=False).numpy()
    # the same function in float32 (a wrong row/column of the scale would move the logits by O(1))
    assert np.abs(after - logits).max() <= 1e-4 * np.abs(logits).max()
    r16 = lambda a: tf.cast(tf.cast(a, tf.bfloat16), tf.float32).numpy()  # noqa: E731
    effective = lambda dk, pk: np.einsum("abc,co->abco", dk[..., 0], pk[0, 0])  # noqa: E731
    for l in seps:
        dk0, pk0 = before[l.path]
        dk, pk = l.depthwise_kernel.numpy(), l.pointwise_kernel.numpy()
        # the depthwise x pointwise product is unchanged (the scale went to matching axes) ...
        np.testing.assert_allclose(effective(dk, pk), effective(dk0, pk0), rtol=1e-5, atol=1e-12)
        # ... but its bfloat16-rounded version is not: a new draw of rounding errors
        assert (effective(r16(dk), r16(pk)) != effective(r16(dk0), r16(pk0))).mean() > 0.5


def test_label_comparison_and_summary_against_hand_counts():
    from bench import export_precision_agreement as epa
    ref = np.array([[0, 1, 1], [2, 2, 0]])
    truth = np.array([[0, 1, 2], [2, 255, 1]])
    pred = np.array([[1, 1, 2], [2, 0, 0]])   # changed at (0,0) right->wrong, (0,2) wrong->right, (1,1) ignored
    k = epa.compare_labels([pred], [ref], [truth], 255)
    assert k == {"pixels": 6, "equal": 3, "right_to_wrong": 1, "wrong_to_right": 1}
    recs = [{"variant": "bfloat16:fold", "draw": d, "equal_fraction": e, "miou_change": m}
            for d, (e, m) in enumerate([(0.998, -0.003), (0.996, 0.001), (0.997, 0.005)])]
    recs.append({"variant": "float16:fold", "draw": 0, "refused": "out of range"})
    s = epa.summarize(recs)
    b = s["bfloat16:fold"]
    assert b["draws"] == 3 and abs(b["equal_pct_min"] - 99.6) < 1e-9
    assert abs(b["miou_change_mean"] - 0.1) < 1e-9 and abs(b["miou_change_max_abs"] - 0.5) < 1e-9
    assert abs(b["miou_change_std"] - 100 * np.std([-0.003, 0.001, 0.005])) < 1e-9
    assert s["float16:fold"] == {"draws": 0, "refused": "out of range"}
