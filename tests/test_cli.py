"""The command line's shape: the README's option tables match the parsers, `inspect
export` is a subcommand beside `inspect DIR`, `demo --tiny` refuses what it cannot
honour, `--json` has one meaning. Parser tests need no engine."""

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest

from coserve.cli import build_parser, main
from coserve.cli.inspect import cmd_export, cmd_inspect
from coserve.cli.run import arrival_modes
from coserve.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"
DOCUMENTED_COMMANDS = ("run", "simulate", "bench", "demo", "serve", "inspect", "inspect export",
                       "cluster simulate")


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """'inspect export' -> its parser, through argparse subcommands and CommandParser words."""
    for word in command.split():
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = subs[0].choices[word] if subs and word in subs[0].choices else parser.words[word]
    return parser


def long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings
            if s.startswith("--") and s != "--help"}


def readme_tables() -> list[tuple[list[str], list[str]]]:
    """(commands, options) of each README table introduced by a line
    'Options of `a`, `b` and `c`:' (or 'Engine options of ...', a note in parentheses)."""
    lines = README.read_text().splitlines()
    tables = []
    for i, line in enumerate(lines):
        m = re.fullmatch(r"(?:Engine options|Options) of (.+?)(?: \(.*\))?:", line)
        if not m:
            continue
        commands = re.findall(r"`([^`]+)`", m.group(1))
        rows = []
        for row in lines[i + 2:]:  # a blank line, then the table
            if not row.startswith("|"):
                break
            rows.append(row)
        assert rows[0].startswith("| option"), f"no option table after {line!r}"
        options = [re.search(r"`([^`]+)`", r.split("|")[1]).group(1).split()[0] for r in rows[2:]]
        tables.append((commands, options))
    return tables


def test_readme_tables_list_only_options_the_parsers_have():
    parser = build_parser()
    tables = readme_tables()
    claimed = {c for commands, _ in tables for c in commands}
    assert claimed >= set(DOCUMENTED_COMMANDS)
    for commands, options in tables:
        for command in commands:
            missing = set(options) - long_options(subparser(parser, command))
            assert not missing, f"the README lists {sorted(missing)} for `coserve {command}`"


@pytest.mark.parametrize("command", DOCUMENTED_COMMANDS)
def test_every_option_is_in_a_readme_table(command):
    documented = {o for commands, options in readme_tables() if command in commands for o in options}
    undocumented = long_options(subparser(build_parser(), command)) - documented
    assert not undocumented, f"`coserve {command}` has {sorted(undocumented)}, not in the README"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_inspect_export_is_a_subcommand_beside_inspect_dir():
    args = parse("inspect", "export", "--db", "r.sqlite", "--csv", "out.csv")
    assert args.func is cmd_export and args.db == Path("r.sqlite") and args.csv == Path("out.csv")
    args = parse("inspect", "lots/a", "--repo", "repo", "--db", "r.sqlite")
    assert args.func is cmd_inspect and args.dir == Path("lots/a") and args.repo == Path("repo")
    # A lot folder named export is given as a path.
    args = parse("inspect", "./export", "--repo", "repo", "--db", "r.sqlite", "--export-csv", "o.csv")
    assert args.func is cmd_inspect and args.dir == Path("export") and args.export_csv == Path("o.csv")
    args = parse("-v", "inspect", "export", "--db", "r.sqlite", "--csv", "out.csv")
    assert args.func is cmd_export and args.verbose


def test_inspect_usage_errors_say_what_to_do(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("inspect", "export", "--repo", "repo", "--db", "r.sqlite")
    assert exc.value.code == 2
    assert "give it as ./export" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("inspect", "lot", "--db", "r.sqlite")  # no --repo
    assert "--repo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("inspect", "lot", "--repo", "repo", "--db", "r.sqlite", "--csv", "o.csv")


def test_inspect_export_of_a_missing_database_is_one_error_line(tmp_path, capsys):
    code = main(["inspect", "export", "--db", str(tmp_path / "none.sqlite"), "--csv", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:")


@pytest.mark.parametrize("extra, named", [
    (["some-repo"], "REPO"),
    (["some-repo", "some-trace"], "TRACE"),
    (["--size", "tiny"], "--size"),
    (["--sweep", "0.1,0.2"], "--sweep"),
    (["--ray"], "--ray"),
    (["--max-inflight", "4"], "--max-inflight"),
    (["--repeat", "3"], "--repeat"),
    (["--plan", "plan.json"], "--plan"),
    (["--report-dir", "reports"], "--report-dir"),
])
def test_demo_tiny_refuses_what_it_cannot_honour(extra, named, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COSERVE_CACHE", str(tmp_path))
    assert main(["demo", "--tiny", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: demo --tiny cannot honour") and named in err[0]
    assert not (tmp_path / "zoo").exists()  # refused before any work


def test_bad_policies_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COSERVE_CACHE", str(tmp_path))
    assert main(["demo", "--tiny", "--policies", "samba,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["bench", "--policies", "samba", "--sweep", "0.1,x"]) == 2
    assert "--sweep" in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_arrivals_default_to_both_modes_and_realtime_means_trace(command):
    assert arrival_modes(parse(command)) == ("backlog", "trace")
    assert arrival_modes(parse(command, "--arrivals", "trace")) == ("trace",)
    assert arrival_modes(parse(command, "--arrivals", "backlog")) == ("backlog",)
    assert arrival_modes(parse(command, "--arrivals", "trace, backlog")) == ("trace", "backlog")
    assert arrival_modes(parse(command, "--realtime")) == ("trace",)
    assert arrival_modes(parse(command, "--realtime", "--arrivals", "trace")) == ("trace",)
    for argv in (["--arrivals", "nope"], ["--arrivals", ""], ["--realtime", "--arrivals", "backlog"]):
        with pytest.raises(ConfigError):
            arrival_modes(parse(command, *argv))


def test_bad_arrivals_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COSERVE_CACHE", str(tmp_path))
    assert main(["demo", "--tiny", "--arrivals", "backlog,later"]) == 2
    assert "--arrivals" in capsys.readouterr().err
    assert main(["bench", "--realtime", "--arrivals", "backlog"]) == 2
    assert "--realtime means --arrivals trace" in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists()


def test_json_is_a_flag_and_json_out_a_file():
    assert parse("run", "repo", "trace", "--json").json is True
    assert parse("simulate", "repo", "trace", "--plan", "p.json", "--json").json is True
    assert parse("bench", "--json-out", "b.json").json_out == Path("b.json")
    assert parse("demo", "--json-out", "d.json").json_out == Path("d.json")
    for command in ("bench", "demo"):
        with pytest.raises(SystemExit):  # never an abbreviation of --json-out
            parse(command, "--json", "b.json")


def test_bench_and_demo_have_no_backlog_or_policy_option():
    for command in ("bench", "demo"):
        for option in ("--backlog", "--policy"):
            with pytest.raises(SystemExit):
                parse(command, option, *(["coserve"] if option == "--policy" else []))


def test_parsers_do_not_write_defaults_into_args():
    """bench/demo defaults (budget fraction, peer window) are resolved by the commands."""
    args = parse("demo", "--tiny")
    assert args.budget_fraction is None and args.budget_bytes is None
    assert args.max_inflight is None and args.size is None and args.storage == "sata-530"


def test_constants_agree_with_their_sources():
    from coserve.cli.options import PCB_SIZES
    from coserve.zoo.pcb import SIZES

    assert tuple(SIZES) == PCB_SIZES


def test_demo_tiny_honours_policies_limit_and_json_out(tiny_zoo, tmp_path, monkeypatch):
    shutil.copytree(tiny_zoo[0], tmp_path / "zoo" / "tiny")
    monkeypatch.setenv("COSERVE_CACHE", str(tmp_path))
    out = tmp_path / "out" / "demo.json"
    args = ["demo", "--tiny", "--policies", "samba,coserve", "--limit", "30", "--no-measure",
            "--storage", "none", "--json-out", str(out)]
    assert main(args) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["policy"], r["arrivals"]) for r in rows] == [
        (p, mode) for mode in ("backlog", "trace") for p in ("samba", "coserve")]
    assert all(r["num_requests"] == 30 and "switches_over_floor" in r for r in rows)
    assert rows[0]["budget_bytes"] == int(0.3 * rows[0]["total_expert_bytes"])
    assert data["metadata"]["raw_storage_bytes_per_s"] > 0 and "switch_floor" in data["metadata"]
    assert not data["sweep"]


# -- --trust-repo-code: every command that opens a repository ----------------------------------
TRUST_COMMANDS = {  # command line up to the repository being opened (nothing exists: it fails)
    "run": ["run", "REPO", "trace.jsonl"],
    "simulate": ["simulate", "REPO", "trace.jsonl", "--plan", "plan.json"],
    "plan": ["plan", "REPO", "trace.jsonl", "--plan", "plan.json", "--budget-bytes", "1"],
    "profile": ["profile", "REPO", "--out", "plan.json"],
    "bench": ["bench", "REPO", "trace.jsonl", "--no-plan"],
    "demo": ["demo", "REPO", "trace.jsonl", "--no-plan"],
    "serve": ["serve", "REPO"],
    "inspect": ["inspect", "LOT", "--repo", "REPO", "--db", "r.sqlite"],
}


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("command", sorted(TRUST_COMMANDS))
def test_every_command_that_opens_a_repository_passes_the_trust_flag(
    command, trusted, tmp_path, monkeypatch
):
    import coserve.repository

    seen = []

    class Opened(Exception):
        pass

    def fake_open(path, *, trust_code=False):
        seen.append(trust_code)
        raise Opened

    monkeypatch.setattr(coserve.repository, "open_repository", fake_open)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "LOT").mkdir()
    with pytest.raises(Opened):
        main(TRUST_COMMANDS[command] + (["--trust-repo-code"] if trusted else []))
    assert seen == [trusted]


def test_an_untrusted_repository_is_one_error_line_and_runs_with_the_flag(tiny_zoo, tmp_path, capsys):
    import shutil

    import yaml

    root = tmp_path / "repo"
    shutil.copytree(tiny_zoo[0], root)
    spec = yaml.safe_load((root / "coe.yaml").read_text())
    spec["routing"]["callable"] = "routing_fixtures:route_or_raise"
    (root / "coe.yaml").write_text(yaml.safe_dump(spec))
    trace = str(tiny_zoo[1])
    args = ["run", str(root), trace, "--no-measure", "--executors", "cpu:1", "--json"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "routing.callable" in err[0] and "'routing_fixtures:route_or_raise'" in err[0]
    assert "--trust-repo-code" in err[0] and "trust" in err[0]
    assert main([*args, "--trust-repo-code"]) in (0, 1)  # D requests fail by the rule's design
    assert '"num_requests"' in capsys.readouterr().out
