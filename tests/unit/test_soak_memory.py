"""The soak's memory check: a one-off step after warm-up passes, a steady climb does not."""

from bench.soak import late_rss_growth


def test_step_after_warmup_then_flat_is_not_growth():
    # the CI run that failed the old check: +147 MiB within a second of the warm-up, then flat
    timeline = [(1.0, 1540.9), (13.1, 1543.1), (27.2, 1543.1), (41.3, 1543.1), (53.4, 1543.1)]
    assert late_rss_growth(timeline, 1543.1, 54.9, 1394.2) == 0.0


def test_steady_climb_shows_in_the_second_half():
    timeline = [(float(t), 1000.0 + 2 * t) for t in range(1, 61)]  # 2 MiB/s
    assert late_rss_growth(timeline, 1120.0, 60.0, 1000.0) == 60.0


def test_run_shorter_than_one_sample_measures_from_the_start():
    assert late_rss_growth([], 1010.0, 0.5, 1000.0) == 10.0
