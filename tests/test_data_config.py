"""Recipe checks of the data and tokenizer sections: sources, weights, filters, dedup, masking."""

import pytest

from lmtrain.config.recipe import RecipeError, load_recipe
from tests.conftest import REPO_ROOT


def problems_of(tmp_path, overrides):
    path = tmp_path / "recipe.yaml"
    path.write_text("{}\n", encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return info.value.problems


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.sources.0.weight=-1", "data.sources.0.weight: -1.0 must be >= 0"),
        ("data.sources.0.weight=0", "data.sources: the weights sum to 0"),
        ("data.sources.0.streaming=true", "data.sources.0.streaming: only kind 'hub' streams"),
        ("data.filters.max_short_line_ratio=1.5", "data.filters.max_short_line_ratio: 1.5 must be a fraction"),
        (
            "data.filters.max_top_ngram_char_ratios=[0.2, 2]",
            "data.filters.max_top_ngram_char_ratios.1: 2.0 must be a fraction",
        ),
        ("data.sources.0.filters={min_units: -1}", "data.sources.0.filters.min_units: must be >= 0"),
        (
            "data.sources.0.clean={strip_htm: false}",
            "data.sources.0.clean.strip_htm: unknown key; did you mean data.sources.0.clean.strip_html?",
        ),
        ("data.dedup.near_threshold=0", "data.dedup.near_threshold: must be in (0, 1]"),
        ("data.dedup.num_perm=1", "data.dedup.num_perm: must be at least 2"),
        ("data.dedup.ngram=0", "data.dedup.ngram: must be at least 1"),
        ("data.document_masking=yes please", "data.document_masking: expected bool"),
    ],
)
def test_bad_data_settings_name_the_key(tmp_path, override, expected):
    problems = problems_of(tmp_path, [override])
    assert any(expected in p for p in problems), problems


def test_per_source_settings_and_defaults(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        """
data:
  document_masking: true
  sources:
    - {kind: hub, dataset: org/web, streaming: true, weight: 3, filters: {enabled: true, min_units: 20}}
    - {kind: files, paths: [code/*.py.txt], weight: 1, clean: {strip_html: false}}
""",
        encoding="utf-8",
    )
    recipe = load_recipe(path)
    web, code = recipe.data.sources
    assert (web.streaming, web.weight, web.filters.enabled, web.filters.min_units, web.clean) == (
        True,
        3.0,
        True,
        20,
        None,
    )
    assert web.filters.max_units == 100_000  # unspecified keys keep their defaults
    assert (code.weight, code.clean.strip_html, code.clean.unicode_nfc, code.filters) == (1.0, False, True, None)
    assert recipe.data.document_masking and not recipe.data.filters.enabled
    assert recipe.data.dedup.exact and recipe.data.dedup.near


def test_the_7b_recipe_mixes_weighted_streamed_hub_sources():
    recipe = load_recipe(REPO_ROOT / "recipes" / "llama-7b" / "pretrain.yaml")
    sources = recipe.data.sources
    assert all(s.kind == "hub" and s.streaming and s.weight > 0 for s in sources)
    assert len(sources) == 3 and recipe.data.document_masking
