"""The report: pareto.png of the right size with the front and baseline, index.html with table, params and images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib import image as mpimg  # noqa: E402

from vae_automl.report import (  # noqa: E402
    PLOT_DPI,
    SUBPLOT_HEIGHT_IN,
    SUBPLOT_WIDTH_IN,
    StudyPoints,
    baseline_index,
    format_front_table,
    plot_pareto,
    short_params,
)
from conftest import digits_space, run_small_study  # noqa: E402
from vae_automl.progress import format_number  # noqa: E402
from vae_automl.study import load_front  # noqa: E402

SPACE = digits_space("report-test", hidden_width="{low: 8, high: 64, log: true}", latent_dim="{low: 2, high: 6}",
                     epochs=2, sampler_seed=1, latency_batch_size=16, trials=2)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 2-trial, 3-objective study and its report (run once for the module), written under a backend that
    must stay the caller's: ``matplotlib.use`` raises while the report is written."""
    import matplotlib

    from vae_automl.cli import main

    root = tmp_path_factory.mktemp("report")
    storage = run_small_study(SPACE, root, trials=2)
    backend = matplotlib.get_backend()

    def refuse(name: str, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the report switched the global matplotlib backend to {name}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib, "use", refuse)
        assert main(["report", "--storage", storage, "--study", "report-test", "--out", str(root / "report")]) == 0
    assert matplotlib.get_backend() == backend
    yield {"storage": storage, "out": root / "report"}


def test_pareto_png_is_a_real_image_with_three_projections(report: dict[str, Any]) -> None:
    image = mpimg.imread(report["out"] / "pareto.png")
    # Three objectives -> three pairwise projections side by side.
    assert image.shape == (SUBPLOT_HEIGHT_IN * PLOT_DPI, 3 * SUBPLOT_WIDTH_IN * PLOT_DPI, 4)
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas


def test_index_html_has_the_table_plot_params_and_image_grids(report: dict[str, Any]) -> None:
    page = (report["out"] / "index.html").read_text()
    front = load_front(report["storage"], "report-test")
    assert front
    assert '<img src="pareto.png"' in page
    for name in ("test_elbo_nats", "size_bytes", "latency_ms"):
        assert name in page
    for entry in front:
        assert f"<section id=trial-{entry.trial}>" in page
        assert f"mlp.hidden_width</td><td>{entry.params['mlp.hidden_width']}</td>" in page
        grid = mpimg.imread(report["out"] / f"trial-{entry.trial}.png")
        # Four rows (test images, reconstructions, two of samples) of 8 digits, each upscaled to 56+ px.
        assert grid.shape[0] >= 4 * 56 and grid.shape[1] >= 8 * 56
        assert f'src="trial-{entry.trial}.png"' in page
    assert "Uncompressed baseline: trial" in page  # no trial compressed, so the baseline exists


def test_index_html_table_shows_every_recorded_metric(report: dict[str, Any]) -> None:
    page = (report["out"] / "index.html").read_text()
    table = page.split("<h2>Pareto front</h2>")[1].split("</table>")[0]
    header = [cell.split("</th>")[0] for cell in table.split("<th>")[1:]]
    front = load_front(report["storage"], "report-test")
    recorded = [n for n in front[0].record.metrics if n not in front[0].objectives]
    assert {"recon_error", "params"} <= set(recorded)  # figures recorded besides the three objectives
    assert header == ["trial", "test_elbo_nats (min)", "size_bytes (min)", "latency_ms (min)", *recorded, "searched params"]
    assert len(set(header)) == len(header)  # the `params` figure (stored weights) is not the sampled params' column
    for entry in front:
        row = table.split(f"<a href=#trial-{entry.trial}>")[1].split("</tr>")[0]
        cells = [c.split("</td>")[0] for c in row.split("<td>")[1:]]
        assert cells[3:3 + len(recorded)] == [format_number(entry.record.metrics[n]) for n in recorded]


def test_baseline_is_the_best_uncompressed_trial() -> None:
    records = [{"config": {"pipeline": []}}, {"config": {"pipeline": [{"compressor": "uniform", "params": {}}]}},
               {"config": {"pipeline": []}}]
    values = np.array([[30.0, 100.0], [20.0, 10.0], [25.0, 200.0]])
    assert baseline_index(records, values, ["minimize", "minimize"]) == 2
    assert baseline_index(records, values, ["maximize", "minimize"]) == 0
    assert baseline_index(records[1:2], values[1:2], ["minimize", "minimize"]) is None


def test_two_objective_plot_has_one_panel(tmp_path: Path) -> None:
    points = StudyPoints(["a", "b"], ["minimize", "minimize"], [0, 1, 2], np.array([[1.0, 3.0], [2.0, 1.0], [3.0, 3.0]]),
                         front=[0, 1], baseline=None)
    image = mpimg.imread(plot_pareto(points, tmp_path / "p.png"))
    assert image.shape == (SUBPLOT_HEIGHT_IN * PLOT_DPI, SUBPLOT_WIDTH_IN * PLOT_DPI, 4)


def test_front_table_still_formats(report: dict[str, Any]) -> None:
    front = load_front(report["storage"], "report-test")
    table = format_front_table(front, knee=front[0].trial)
    assert table.splitlines()[0].startswith("| trial") and f"{front[0].trial}*" in table
    assert short_params({"mlp.hidden_width": 10, "compressor0.uniform.bits": 4}) == "hidden_width=10 uniform.bits=4"
