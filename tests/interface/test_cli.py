"""The ``gradeclip`` command: its subcommands and their help, the ``python -m`` aliases (the same parsers),
``--layers`` with negative indices, and one-line errors."""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradeclip_utils import cli

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "data" / "samples" / "three_shapes.png"


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def signature(parser: argparse.ArgumentParser) -> list[tuple]:
    """What a parser accepts: every option's names, destination, default, choices, count, type and help."""
    return [(tuple(a.option_strings), a.dest, repr(a.default), a.choices and tuple(a.choices), a.nargs,
             getattr(a.type, "__qualname__", a.type), a.required, a.help) for a in parser._actions]


# ------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_has_a_help(command, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main([*command.split(), "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: gradeclip {command} ")
    if command in cli.ALIASES:  # the description is the module's own documentation
        first = importlib.import_module(cli.ALIASES[command]).__doc__.strip().splitlines()[0]
        assert first in text


def test_the_command_lists_its_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for command in ["explain", "explain-dataset", "evaluate", "notebooks", "methods", "synthetic"]:
        assert f"\n    {command} " in text or f"\n    {command}\n" in text, command
    for module in cli.ALIASES.values():
        assert f"python -m {module}" in text
    with pytest.raises(SystemExit):
        cli.main(["synthetic", "--help"])
    assert "train" in capsys.readouterr().out


def test_every_option_says_what_it_does_and_its_default():
    parser = cli.build_parser()
    assert set(parser.commands) == set(cli.COMMANDS)
    for command, sub in parser.commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = f"gradeclip {command} {action.option_strings or action.dest}"
            assert action.help and len(action.help) >= 15, name
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in action.help, f"{name}: say its default ({action.default!r})"


def test_the_shared_options_take_the_package_constants():
    from gradeclip_utils.adapters import MODES
    from gradeclip_utils.inputs import DEFAULT_MAX_PATCHES, RESOLUTIONS
    from gradeclip_utils.loading import PRECISION_DTYPES
    from gradeclip_utils.methods import QK_CHOICES, list_methods

    parser = cli.build_parser()
    for command in ("explain", "explain-dataset"):
        actions = {a.dest: a for a in parser.commands[command]._actions}
        assert tuple(actions["mode"].choices) == MODES and tuple(actions["qk"].choices) == QK_CHOICES
        assert tuple(actions["resolution"].choices) == RESOLUTIONS
        assert tuple(actions["precision"].choices) == tuple(PRECISION_DTYPES)
        assert list(actions["method"].choices) == list_methods()["image"]
        assert actions["max_patches"].default == DEFAULT_MAX_PATCHES
    actions = {a.dest: a for a in parser.commands["evaluate"]._actions}
    assert tuple(actions["precision"].choices) == tuple(PRECISION_DTYPES)


# ---------------------------------------------------------------------------------------- aliases
ALIAS_ARGV = {
    "explain-dataset": ["pictures", "--classes", "all", "--layers", "-2,-1", "--max-patches", "64", "--model", "RN50",
                        "--out", "maps"],
    "evaluate": ["-n", "3", "--methods", "grad_eclip,rise", "--device", "cpu", "--out", "somewhere"],
    "notebooks": ["--out", "o", "--only", "01", "06", "--quick", "--param", "N_SCENES=5", "--param", "NAME=text"],
    "synthetic train": ["--out", "run", "--steps", "2", "--vision", "layers=2", "--mix", "single=0.5"],
    "synthetic evaluate": ["--layers", "-2", "-1", "--n-choice", "4", "--json", "r.json"],
    "synthetic train-classifier": ["--out", "run", "--steps", "2", "--single-share", "0.25", "--no-evaluate"],
    "critique": ["--out", "o", "--parts", "equivalence", "cost", "--random-model", "none", "--seed", "3"],
}


@pytest.mark.parametrize("command", list(cli.ALIASES))
def test_the_python_m_aliases_are_the_same_commands(command, monkeypatch):
    """``python -m MODULE ARGS`` parses with the subcommand's own options and runs the same function with
    the same arguments as ``gradeclip COMMAND ARGS``."""
    assert set(ALIAS_ARGV) == set(cli.ALIASES)
    assert signature(cli.command_parser(command)) == signature(cli.build_parser().commands[command])
    module = importlib.import_module(cli.ALIASES[command])
    calls = []
    monkeypatch.setattr(module, "run_command", lambda *a: calls.append(a) or 0)
    argv = ALIAS_ARGV[command]
    cli.alias_main(command, list(argv))
    assert cli.main([*command.split(), *argv]) == 0
    (alias_call, command_call) = calls
    alias_args = next(a for a in alias_call if isinstance(a, argparse.Namespace))
    command_args = next(a for a in command_call if isinstance(a, argparse.Namespace))
    assert vars(alias_args) == {k: v for k, v in vars(command_args).items()
                                if k not in ("command", "synthetic_command")}
    if command == "evaluate":  # the command's own arguments, for the line the summary records
        assert alias_call[2] == command_call[2] == argv
        assert alias_call[0].prog == "python -m gradeclip_utils.evaluate" and command_call[0].prog == "gradeclip evaluate"


# ----------------------------------------------------------------------------------------- layers
def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_layers_take_negative_indices_in_every_form():
    assert parse("explain", "x.png", "a dog", "--layers", "-1,-2").layers == [-1, -2]
    assert parse("explain", "--layers", "-3,-2,-1", "x.png", "a dog").layers == [-3, -2, -1]
    assert parse("explain", "x.png", "a dog", "--layers=-1,-2").layers == [-1, -2]
    assert parse("explain", "x.png", "a dog", "--layers", "-1").layers == [-1]
    assert parse("explain", "x.png", "a dog", "--layers", "2, -1").layers == [2, -1]
    assert parse("explain", "x.png", "a dog").layers == [-1]
    args = parse("explain", "x.png", "a dog", "--layers", "-2,-1", "--no-words")
    assert args.prompts == ["a dog"] and args.no_words
    assert parse("explain-dataset", "f", "--prompts", "p.txt", "--out", "o", "--layers", "-2,-1").layers == [-2, -1]
    assert parse("synthetic", "evaluate", "--layers", "-2", "-1").layers == [-2, -1]
    assert parse("synthetic", "evaluate", "--layers", "-2,-1").layers == [-2, -1]
    assert parse("synthetic", "evaluate").layers == [-1]


@pytest.mark.parametrize("value", ["x", "1,x", "", ","])
def test_bad_layers_are_refused_with_the_form_to_use(value, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse("explain", "x.png", "a dog", "--layers", value)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gradeclip explain: error: argument --layers: expected comma-separated block indices such as -1 or -1,-2, "
        f"got {value!r} (see gradeclip explain --help)"]


def test_a_number_list_is_an_argument_not_an_option(capsys):
    assert parse("explain", "x.png", "a dog", "-1,-2").prompts == ["a dog", "-1,-2"]
    with pytest.raises(SystemExit):
        parse("methods", "-1,-2")  # a value where none is expected
    assert "unrecognized arguments: -1,-2" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def resnet_folder(tmp_path_factory):
    """A tiny open_clip ResNet CLIP saved as a model folder: a family without M2IB."""
    from gradeclip_utils.synthetic.config import OPEN_CLIP_CONFIG, build_model, save_model

    config = copy.deepcopy(OPEN_CLIP_CONFIG)
    config["model_cfg"]["vision_cfg"] = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64}
    config["model_cfg"]["text_cfg"].update(layers=1, width=32, heads=2)
    folder = tmp_path_factory.mktemp("models") / "resnet"
    save_model(build_model(config).eval(), folder, config)
    return folder


def assert_one_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("gradeclip explain: error: ") and all(p in lines[0] for p in parts), lines[0]


def test_a_method_the_family_cannot_run_is_one_line(resnet_folder, tmp_path, capsys):
    code, out, err = run(["explain", str(IMAGE), "a red circle", "--model", str(resnet_folder), "--device", "cpu",
                          "--method", "m2ib", "--out", str(tmp_path / "fig.png")], capsys)
    assert code == 2 and not (tmp_path / "fig.png").exists()
    assert_one_line(err, "m2ib", "ResNet")


def test_a_bad_model_name_is_one_line(tmp_path, capsys):
    code, out, err = run(["explain", str(IMAGE), "a dog", "--model", "ViT-B-61", "--out", str(tmp_path / "f.png")],
                         capsys)
    assert code == 2
    assert_one_line(err, "unknown model", "'ViT-B-16'", "synthetic")


def test_a_missing_image_or_a_folder_is_one_line(tmp_path, capsys):
    code, out, err = run(["explain", str(tmp_path / "missing.png"), "a dog"], capsys)
    assert code == 2
    assert_one_line(err, "image file not found", "missing.png")
    code, out, err = run(["explain", str(tmp_path), "a dog"], capsys)
    assert code == 2
    assert_one_line(err, "is a folder", "explain-dataset")


def test_the_command_passes_max_patches(tmp_path, capsys):
    """--max-patches reaches explain_image: a 64 x 64 picture in 8-pixel patches (64 of them) is downscaled
    to at most 16 patches, with the package's warning."""
    with pytest.warns(UserWarning, match=r"more than 16 patches .* downscaled to 32x32"):
        code, out, err = run(["explain", str(IMAGE), "a red circle", "--max-patches", "16", "--no-words",
                              "--out", str(tmp_path / "fig.png")], capsys)
    assert code == 0 and (tmp_path / "fig.png").is_file()


def test_the_command_passes_the_score(tmp_path, capsys):
    """--score reaches explain_image and explain_text (the probabilities of the prompts sum to 1); the contrast
    takes one --versus prompt per prompt and has no word importance."""
    code, out, err = run(["explain", str(IMAGE), "a red circle", "a blue square", "--score", "probability",
                          "--out", str(tmp_path / "p.png")], capsys)
    assert code == 0 and (tmp_path / "p.png").is_file() and (tmp_path / "p_words1.png").is_file()
    scores = [float(line.split()[0]) for line in out.splitlines()[:2]]
    assert abs(sum(scores) - 1) < 1e-3
    code, out, err = run(["explain", str(IMAGE), "a red circle", "a star", "--score", "contrast", "--versus",
                          "a blue circle", "a cross", "--out", str(tmp_path / "c.png")], capsys)
    assert code == 0 and (tmp_path / "c.png").is_file() and not (tmp_path / "c_words0.png").exists()
    assert "a red circle rather than a blue circle" in out and "a star rather than a cross" in out
    assert "no word importance" in out
    assert parse("explain", "x.png", "a dog").score == "cosine"
    # the dataset job and the evaluation pass the score on too (the evaluation without the contrast)
    actions = {command: {a.dest: a for a in cli.build_parser().commands[command]._actions}
               for command in ("explain-dataset", "evaluate")}
    assert tuple(actions["explain-dataset"]["score"].choices) == ("cosine", "logit", "probability", "contrast", "itc",
                                                                  "itm")
    assert tuple(actions["evaluate"]["score"].choices) == ("cosine", "logit", "probability")
    assert "--versus" not in {o for a in actions["explain-dataset"].values() for o in a.option_strings}


@pytest.mark.parametrize("argv,message", [
    (["--score", "contrast"], "--score contrast needs one --versus prompt per prompt (1)"),
    (["--score", "contrast", "--versus", "a", "b"], "--score contrast needs one --versus prompt per prompt (1)"),
    (["--versus", "a blue circle"], "--versus gives the second prompt of a contrast: use it with --score contrast"),
    (["--score", "probability"], "score='probability'"),
])
def test_a_score_that_does_not_fit_the_prompts_is_one_line(tmp_path, capsys, argv, message):
    code, out, err = run(["explain", str(IMAGE), "a red circle", *argv, "--out", str(tmp_path / "f.png")], capsys)
    assert code == 2 and not (tmp_path / "f.png").exists()
    assert_one_line(err, message)


#: each command with an output location, as it would be run (OUT: the location)
WRITING = {
    "explain": ["explain", str(IMAGE), "a red circle", "--out", "OUT/fig.png"],
    "explain-dataset": ["explain-dataset", str(IMAGE.parent), "--classes", "--out", "OUT"],
    "evaluate": ["evaluate", "-n", "2", "--out", "OUT"],
    "notebooks": ["notebooks", "--out", "OUT", "--quick"],
    "critique": ["critique", "--quick", "--out", "OUT"],
    "synthetic train": ["synthetic", "train", "--out", "OUT", "--steps", "1"],
    "synthetic train-classifier": ["synthetic", "train-classifier", "--out", "OUT", "--steps", "1"],
}


@pytest.fixture()
def nothing_runs(monkeypatch):
    """Loading a model (or running a notebook, or training) fails the test: the checks come before any work."""
    from gradeclip_utils import loading, notebooks
    from gradeclip_utils.synthetic import train, train_classifier

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(loading, "load_model", refuse)
    monkeypatch.setattr(notebooks, "run_all", refuse)
    monkeypatch.setattr(train, "train", refuse)
    monkeypatch.setattr(train_classifier, "train_classifier", refuse)


@pytest.mark.parametrize("command", list(WRITING))
def test_an_output_under_a_file_is_refused_before_any_work(command, tmp_path, capsys, nothing_runs):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    argv = [arg.replace("OUT", str(blocker / "sub")) for arg in WRITING[command]]
    code, out, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"gradeclip {command}: error: cannot write to {blocker / 'sub'}"), lines[0]
    assert f"{blocker} is a file, not a folder" in lines[0]
    assert set(parser_commands_with_outputs()) == set(cli.OUTPUTS)


def parser_commands_with_outputs() -> list[str]:
    """The commands that have an option naming where they write (--out, --doc, --json, --export)."""
    parser = cli.build_parser()
    return [command for command, sub in parser.commands.items()
            if any(set(a.option_strings) & {"--out", "--doc", "--json", "--export"} for a in sub._actions)]


def test_an_unwritable_output_says_permission_denied(tmp_path, capsys, monkeypatch, nothing_runs):
    """Root writes everywhere, so the refusal of the file system is stood in for by os.access."""
    from gradeclip_utils import records

    monkeypatch.setattr(records.os, "access", lambda path, mode: False)
    for argv in (["explain", str(IMAGE), "x", "--out", str(tmp_path / "figures" / "fig.png")],
                 ["explain-dataset", str(IMAGE.parent), "--classes", "--out", str(tmp_path / "maps")]):
        code, out, err = run(argv, capsys)
        target = argv[argv.index("--out") + 1]
        assert code == 2 and err.strip().splitlines() == [
            f"gradeclip {argv[0]}: error: cannot write to {target} (permission denied)"]


def test_writable_output_checks_without_writing(tmp_path):
    from gradeclip_utils.records import OutputNotWritableError, writable_output

    assert writable_output(tmp_path / "a" / "b", folder=True) == tmp_path / "a" / "b"
    assert writable_output(tmp_path / "c" / "fig.png", folder=False) == tmp_path / "c" / "fig.png"
    assert list(tmp_path.iterdir()) == []  # nothing made, the probe file gone
    with pytest.raises(OutputNotWritableError, match="it is a folder"):
        writable_output(tmp_path, folder=False)
    (tmp_path / "f").write_text("")
    with pytest.raises(PermissionError, match=r"cannot write to .*f/g/h: .*f is a file, not a folder"):
        writable_output(tmp_path / "f" / "g" / "h", folder=True)  # a PermissionError, as the write would raise


def test_the_main_help_has_examples_and_names_the_default_model(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith("gradeclip explain ")]
    assert len(examples) >= 2 and any("--model ViT-B-16 --pretrained openai" in line for line in examples)
    assert "embedded synthetic CLIP unless --model" in " ".join(text.split())


def test_every_option_of_every_parser_has_a_help():
    """Walks the parsers as argparse holds them (the top level, the "synthetic" group, each subcommand)."""
    missing, stack = [], [("gradeclip", cli.build_parser())]
    while stack:
        name, parser = stack.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack += [(f"{name} {sub}", subparser) for sub, subparser in action.choices.items()]
            elif not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_alias_errors_are_one_line_too(capsys):
    """What ``python -m gradeclip_utils.notebooks`` runs: a user error is one line, exit status 2."""
    from gradeclip_utils import notebooks

    code = cli.run_guarded(lambda: cli.alias_main("notebooks", ["--list", "--only", "99"]),
                           "python -m gradeclip_utils.notebooks")
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"python -m gradeclip_utils.notebooks: error: no notebook matches '99'; have "
        f"{[p.stem for p in notebooks.select_notebooks(None)]}"]


def test_the_installed_command_in_a_process_of_its_own(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "gradeclip_utils.cli", "explain", str(tmp_path / "gone.png"),
                             "a dog", "--layers", "-1,-2"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"gradeclip explain: error: image file not found: {tmp_path / 'gone.png'}"]
