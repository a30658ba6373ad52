"""A sandbox's metric series: every sample of the last hour, one a minute before that, and
never more than MAX_SAMPLES whatever the interval or the sandbox's life."""

from __future__ import annotations

import dataclasses

from corral.runtime.gpu import GpuUsage
from corral.server.services._series import (FULL_WINDOW, MAX_RECENT, MAX_SAMPLES, MAX_THINNED,
                                            THIN_STEP, Sample, Series, cpu_percent)
from corral.server.services.sampler import gpu_reading


def _sample(t: float) -> Sample:
    return Sample(time=t, cpu_percent=1.0, memory_used=1, memory_limit=2, memory_cache=0,
                  disk_used=3,
                  disk_limit=4, pids=5, net_rx_bytes=None, net_tx_bytes=None)


def _fill(series: Series, start: float, count: int, step: float) -> None:
    for i in range(count):
        series.add(_sample(start + i * step))


def test_an_hour_at_five_seconds_is_kept_whole() -> None:
    series = Series("t")
    _fill(series, 0.0, MAX_RECENT, 5.0)
    times = [s.time for s in series.samples()]
    assert times == [i * 5.0 for i in range(MAX_RECENT)]


def test_older_samples_are_thinned_to_one_a_minute() -> None:
    series = Series("t")
    hours = 3
    _fill(series, 0.0, int(hours * 3600 / 5), 5.0)
    times = [s.time for s in series.samples()]
    newest = times[-1]
    recent = [t for t in times if t >= newest - FULL_WINDOW]
    older = [t for t in times if t < newest - FULL_WINDOW]
    assert len(recent) <= MAX_RECENT
    assert all(b - a == 5.0 for a, b in zip(recent, recent[1:], strict=False))
    assert older and all(b - a >= THIN_STEP for a, b in zip(older, older[1:], strict=False))
    assert times == sorted(times)
    assert older[0] == 0.0  # the first of each minute is the one kept


def test_a_fast_interval_keeps_the_cap_not_the_hour() -> None:
    series = Series("t")
    _fill(series, 0.0, 10 * MAX_RECENT, 0.1)
    times = [s.time for s in series.samples()]
    assert len(times) <= MAX_SAMPLES
    newest = times[-MAX_RECENT:]
    assert newest == [i * 0.1 for i in range(9 * MAX_RECENT, 10 * MAX_RECENT)]
    older = times[:-MAX_RECENT]
    assert older and all(b - a >= THIN_STEP for a, b in zip(older, older[1:], strict=False))


def test_a_long_life_is_bounded() -> None:
    series = Series("t")
    _fill(series, 0.0, 3 * 24 * 3600 // 30, 30.0)  # three days at 30 s
    times = [s.time for s in series.samples()]
    assert len(series) == len(times) <= MAX_SAMPLES
    assert len([t for t in times if t < times[-1] - FULL_WINDOW]) == MAX_THINNED
    assert times[0] > 0.0  # the oldest went first
    assert times[-1] == (3 * 24 * 3600 // 30 - 1) * 30.0


def test_ranges_and_last_points() -> None:
    series = Series("t")
    _fill(series, 100.0, 10, 1.0)
    assert [s.time for s in series.samples(103, 105)] == [103.0, 104.0, 105.0]
    assert [s.time for s in series.samples(start=108)] == [108.0, 109.0]
    assert [s.time for s in series.samples(end=100)] == [100.0]
    assert series.samples(200, 300) == []
    assert [s.time for s in series.last(3)] == [107.0, 108.0, 109.0]
    assert len(series.last(1000)) == 10
    assert series.last(0) == []
    latest = series.latest()
    assert latest is not None and latest.time == 109.0


def test_cpu_percent_is_a_share_of_the_cores() -> None:
    assert cpu_percent(0.0, 1.0, 1.0, 1.0) == 100.0
    assert cpu_percent(0.0, 1.0, 1.0, 2.0) == 50.0
    assert cpu_percent(0.0, 0.25, 1.0, 0.5) == 50.0
    assert cpu_percent(5.0, 1.0, 1.0, 1.0) == 0.0  # a counter that went back
    assert cpu_percent(0.0, 9.0, 1.0, 1.0) == 100.0
    assert cpu_percent(0.0, 1.0, 0.0, 1.0) == 0.0


def test_samples_come_back_as_they_went_in() -> None:
    series = Series("t")
    with_net = Sample(time=1765121400.123456, cpu_percent=12.5, memory_used=2**40,
                      memory_limit=2**29, memory_cache=7, disk_used=0, disk_limit=2**30,
                      pids=3, net_rx_bytes=0, net_tx_bytes=2**50)
    series.add(with_net)
    series.add(_sample(1765121401.0))
    assert series.samples() == [with_net, _sample(1765121401.0)]
    assert series.latest() == _sample(1765121401.0)


def test_gpu_readings_come_back_as_they_went_in() -> None:
    series = Series("t")
    with_gpu = dataclasses.replace(_sample(1765121400.0), gpu_percent=87.5,
                                   gpu_memory_used=80 * 2**30)
    series.add(with_gpu)
    series.add(_sample(1765121401.0))
    assert series.samples() == [with_gpu, _sample(1765121401.0)]
    assert series.samples()[1].gpu_percent is None
    assert series.samples()[1].gpu_memory_used is None


def test_a_sandboxs_gpu_reading_is_its_gpus_mean_and_sum() -> None:
    readings = {0: GpuUsage(100, 2**30, 2**34), 1: GpuUsage(50, 3 * 2**30, 2**34)}
    assert gpu_reading((0, 1), readings) == (75.0, 4 * 2**30)
    assert gpu_reading((1,), readings) == (50.0, 3 * 2**30)
    assert gpu_reading((), readings) is None
    assert gpu_reading((0, 2), readings) is None  # one not read: no half a figure
