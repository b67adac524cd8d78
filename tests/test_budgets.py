"""A job's GPU memory budgets in ``[resources]``: sizes as people write them, checked by the schema
and by ``dvla validate`` with the key, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dvla.cli.main import cli
from dvla.memsize import format_size, parse_size
from dvla.spec import SpecError, parse_spec


@pytest.mark.parametrize(("text", "size"), [
    ("6GiB", 6 * 2**30), ("512 MiB", 512 * 2**20), ("20GB", 20 * 10**9), ("1.5gib", 3 * 2**29), ("4096B", 4096),
    (" 2 TiB ", 2 * 2**40),
])
def test_sizes_take_decimal_and_binary_units_in_any_case(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["6", "6 GiBs", "-1GiB", "GiB", "six GiB", ""])
def test_a_size_without_a_known_unit_is_refused_saying_what_is_accepted(text):
    with pytest.raises(ValueError, match=r'expected a size such as "6GiB".*KiB, MiB, GiB, TiB\), got'):
        parse_size(text)


def test_sizes_print_in_gib_or_mib():
    assert format_size(6.1 * 2**30) == "6.10 GiB"
    assert format_size(300 * 2**20) == "300 MiB"


def test_budgets_default_to_auto_on_gpus_of_the_jobs_own():
    resources = parse_spec("").resources
    assert (resources.weight_pool, resources.activation_pool, resources.share_gpus) == ("auto", "auto", False)
    shared = parse_spec('[resources]\ngpus = 1\nshare_gpus = true\nweight_pool = "6GiB"\n'
                        'activation_pool = "auto"\n').resources
    assert (shared.weight_pool, shared.activation_pool, shared.share_gpus) == ("6GiB", "auto", True)


@pytest.mark.parametrize(("text", "key", "line", "column", "reason"), [
    ('[resources]\ngpus = 1\n  weight_pool = "6 parsecs"\n', "resources.weight_pool", 3, 3,
     'expected a size such as "6GiB", "512MiB" or "20GB"'),
    ('[resources]\ngpus = 1\nactivation_pool = "0MiB"\n', "resources.activation_pool", 3, 1,
     'must be more than 0 bytes, got "0MiB"'),
    ("[resources]\nactivation_pool = 6\n", "resources.activation_pool", 2, 1, "expected a string, got 6"),
    ("[resources]\nshare_gpus = true\n", "resources.share_gpus", 2, 1, "but it asks for none (resources.gpus = 0)"),
    ("[resources]\nshare_base = true\n", "resources.share_base", 2, 1,
     'it needs policy.name = "transformer-vla" with policy.args.lora (full fine-tuning writes the base)'),
    ('[resources]\ngpus = 2\nshare_base = true\n[policy]\nname = "transformer-vla"\n[policy.args.lora]\nr = 4\n',
     "resources.share_base", 3, 1, "share_base maps the base on one device; the job asks for 2 GPUs"),
])
def test_validate_names_the_budget_key_its_line_and_the_reason(tmp_path: Path, text, key, line, column, reason):
    with pytest.raises(SpecError) as info:
        parse_spec(text, "job.toml")
    (issue,) = info.value.issues
    assert (issue.key, issue.line, issue.column) == (key, line, column) and reason in issue.reason
    job = tmp_path / "job.toml"
    job.write_text(text)
    result = CliRunner().invoke(cli, ["validate", str(job)])
    assert result.exit_code == 2 and f":{line}:{column}: {key}: " in result.output and reason in result.output
