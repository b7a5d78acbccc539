"""Every case of validation_cases.py gives exactly its message, and docs/validation.md is their rendering."""

import pytest
from validation_cases import AREAS, CASES, DOC, render


@pytest.mark.parametrize("case", CASES, ids=[f"{c.area}: {c.given}" for c in CASES])
def test_each_bad_input_gives_its_message(case, tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    with pytest.raises(case.error) as raised:
        case.trigger(folder)
    message = str(raised.value)
    assert "\n" not in message
    assert case.matches(message, folder), f"\n  got:  {message}\n  want: {case.expected(folder)}"


def test_cases_are_in_known_areas_and_given_once():
    assert {c.area for c in CASES} <= set(AREAS)
    keys = [(c.area, c.given) for c in CASES]
    assert len(keys) == len(set(keys))


def test_the_validation_page_is_the_rendering_of_the_cases():
    with open(DOC, encoding="utf-8") as f:
        committed = f.read()
    assert committed == render(), "docs/validation.md is out of date: run `python tests/validation_cases.py`"
