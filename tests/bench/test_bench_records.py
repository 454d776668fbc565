"""bench/: records of a partial run merge into the existing file; interleaved timing alternates order."""

from bench import common, run


def test_merge_keeps_only_the_sections_not_run_in_section_order():
    old = [{"name": "search_weight_step", "crop": 65, "median_s": 1.0},       # no "section": by name
           {"name": "inference", "size": "1025x2049", "median_s": 3.5},
           {"name": "conv_peak", "median_s": 0.8},
           {"name": "input_pipeline", "median_s": 0.1, "section": "input"}]
    new = [{"name": "inference", "size": "1025x2049", "median_s": 3.4, "section": "inference"}]
    merged = run.merged_records(old, new, ["inference"])
    assert [(r["name"], r["median_s"]) for r in merged] == [
        ("search_weight_step", 1.0), ("inference", 3.4), ("input_pipeline", 0.1)]
    assert run.merged_records(old, [], ["search", "inference", "input"]) == []


def test_interleaved_timing_reverses_the_order_every_other_round():
    calls = []
    times = common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    warmup=1, repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a b | b a | a b
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
