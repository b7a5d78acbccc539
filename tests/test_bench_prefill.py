"""`benchmarks/bench_prefill.py --tiny`: the prefill of every method's own engine beside full attention (CPU dry
run; its times say nothing), with the FLOP bound of each method's layout."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load


@pytest.fixture(scope="module")
def bench_prefill():
    return load("bench_prefill")


def test_peer_methods_run_through_their_own_engines(bench_prefill, tmp_path):
    out = tmp_path / "rows.json"
    argv = ["--tiny", "--lengths", "256", "--P", "4", "--methods", "naive,pcw,star,nbce", "--repeats", "1"]
    assert bench_prefill.main([*argv, "--json", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"full", "naive", "pcw", "star", "nbce"}
    assert all(r["time_s"] > 0 for r in rows.values())
    # the same pieces: pcw and nbce only move positions; star's anchor joins every other piece's prefix
    assert rows["pcw"]["flops"] == rows["nbce"]["flops"] == rows["naive"]["flops"]
    assert rows["naive"]["flops"] < rows["star"]["flops"] < rows["full"]["flops"]
    with pytest.raises(SystemExit, match="'full' is not a parallel method"):
        bench_prefill.main(["--tiny", "--lengths", "256", "--P", "4", "--methods", "full"])
