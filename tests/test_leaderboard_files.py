"""What `leaderboard` writes: an existing board is replaced whole or not at all, plots keep equal lines
visible and titles inside the figure, and long setting values get a short config key."""

import os

import matplotlib.colors
import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from test_leaderboard import MODEL, write_sweep

from lm_eval_parallel.leaderboard import main_leaderboard, run_settings
from lm_eval_parallel.leaderboard.board import CategoryCell
from lm_eval_parallel.leaderboard.findings import TaskCorrelation
from lm_eval_parallel.leaderboard.plots import plot_against_P, plot_entropy_vs_score

BOARD_FILES = ("README.md", "board.csv", "board.json")


def _snapshot(folder) -> dict:
    return {
        os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.fixture
def existing_board(tmp_path):
    write_sweep(str(tmp_path / "results"))
    out = tmp_path / "board"
    assert main_leaderboard([str(tmp_path / "results"), "--out", str(out), "--no-plots"]) == 0
    (out / "runs").mkdir()
    (out / "runs" / "notes.txt").write_text("kept")
    return out


def test_an_empty_board_writes_nothing_over_an_existing_one(existing_board, tmp_path, capsys):
    before = _snapshot(existing_board)
    (tmp_path / "empty").mkdir()
    assert main_leaderboard([str(tmp_path / "empty"), "--out", str(existing_board)]) == 2
    assert "nothing written to" in capsys.readouterr().err
    assert _snapshot(existing_board) == before
    assert sorted(os.listdir(tmp_path)) == ["board", "empty", "results"]  # no temporary folder left


def test_a_failure_while_writing_leaves_the_old_board(existing_board, tmp_path, monkeypatch):
    before = _snapshot(existing_board)
    write_sweep(str(tmp_path / "newer"), date=2e9)

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr("lm_eval_parallel.leaderboard.plots.write_plots", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        main_leaderboard([str(tmp_path / "newer"), "--out", str(existing_board)])
    assert _snapshot(existing_board) == before
    assert sorted(os.listdir(tmp_path)) == ["board", "newer", "results"]


def test_a_new_board_replaces_the_files_and_keeps_the_others(existing_board, tmp_path):
    write_sweep(str(tmp_path / "newer"), date=2e9, change=lambda t, m, P, s: s * 0.5)
    before = _snapshot(existing_board)
    assert main_leaderboard([str(tmp_path / "newer"), "--out", str(existing_board), "--no-plots"]) == 0
    after = _snapshot(existing_board)
    assert after[os.path.join("runs", "notes.txt")] == b"kept"
    assert all(after[name] != before[name] for name in ("board.csv", "board.json"))
    assert sorted(os.listdir(tmp_path)) == ["board", "newer", "results"]


# ---------------------------------------------------------------------------------------------- plots


def _cells(methods, category="ICL"):
    """The same scores for every method: their lines coincide."""
    return {
        (MODEL, m, P, "", "8k", category): CategoryCell(0.5 - 0.01 * P, 2.0 + 0.1 * P, True, ["t"], "macro", False)
        for m in methods
        for P in (2, 4, 8)
    }


def _pixels(path, color: str) -> int:
    image = matplotlib.image.imread(path)[..., :3]
    return int((np.abs(image - np.array(matplotlib.colors.to_rgb(color))).max(axis=-1) < 0.08).sum())


def test_equal_lines_of_two_methods_stay_visible(tmp_path):
    """naive (tab:blue) under sel (tab:green), same values: much of the naive line must still show."""
    alone, both = str(tmp_path / "alone.png"), str(tmp_path / "both.png")
    assert plot_against_P(_cells(["naive"]), MODEL, "", alone, entropy=False)
    assert plot_against_P(_cells(["naive", "sel"]), MODEL, "", both, entropy=False)
    assert _pixels(both, "tab:green") > 0
    assert _pixels(both, "tab:blue") > 0.3 * _pixels(alone, "tab:blue")


@pytest.mark.parametrize("kind", ["score_vs_P", "entropy_vs_score"])
def test_titles_fit_in_the_figure(tmp_path, monkeypatch, kind):
    figures = []
    save = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        save(fig, *args, **kwargs)
        figures.append(fig)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    model, config = "/very/long/path/to/models/SmolLM2-135M-Instruct.Q4_1.gguf", "dtype=bfloat16,pos=harmonic,top_k=3"
    cells = {(model, *key[1:3], config, *key[4:]): cell for key, cell in _cells(["full", "naive", "sel"]).items()}
    path = str(tmp_path / "plot.png")
    if kind == "score_vs_P":
        assert plot_against_P(cells, model, config, path, entropy=False)
    else:
        points = [(P, 2.0 + 0.1 * P, 0.5 - 0.01 * P) for P in (1, 2, 4, 8)]
        correlations = [TaskCorrelation(model, config, "pce_icl_trec_coarse_8k", "8k", points)]
        assert plot_entropy_vs_score(correlations, model, config, path)
    (fig,) = figures
    FigureCanvasAgg(fig).draw()  # the figure was closed: draw it again, laid out as when it was saved
    renderer = fig.canvas.get_renderer()
    box, frame = fig._suptitle.get_window_extent(renderer), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
    assert model in fig._suptitle.get_text().replace("\n", "")


def test_a_long_setting_value_has_a_short_config_key():
    sink = "Given the following contexts, answer the final question accordingly:\n\n"
    _, _, _, key = run_settings(
        {
            "config": {
                "model_args": {"pretrained": "m", "P": 4, "method": "sink"},
                "pce": {"sink_text": sink, "sink_text_file": "/x/sink.txt"},
            }
        }
    )
    assert key.startswith("sink_text=sha256:") and len(key) == len("sink_text=sha256:") + 12
    _, _, _, short = run_settings({"config": {"model_args": {"pretrained": "m", "sink_text": "Read:"}}})
    assert short == "sink_text=Read:"
