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
