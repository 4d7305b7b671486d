"""cli.options: options from the options dataclasses, each default written once, options built by name."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from ddpm.cli import Parser, build_parser, evaluate
from ddpm.cli import compress as compress_cli
from ddpm.cli import quickstart as quickstart_cli
from ddpm.cli.options import Flag, add_options, build
from ddpm.compression import CodecOptions
from ddpm.evaluation.analytic_variance import AnalyticVarianceOptions
from ddpm.evaluation.common import CommonOptions
from ddpm.evaluation.interpolation import InterpolateOptions
from ddpm.evaluation.nll import NLLOptions
from ddpm.evaluation.progressive import ProgressiveOptions
from ddpm.evaluation.quality import FidOptions
from ddpm.evaluation.rate_distortion import RateDistortionOptions
from ddpm.evaluation.samples import SampleOptions
from ddpm.processes import DEFAULT_DEVICE
from ddpm.quickstart import QuickstartOptions
from ddpm.train import Trainer, train

CLI = Path(evaluate.__file__).parent


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def parse(argv: list[str]) -> argparse.Namespace:
    args, extra = build_parser().parse_known_args(argv)
    assert not extra
    return args


EVAL = ["--checkpoint", "c", "--out", "o"]
# (command line with only the required options, the options it builds, each as its dataclass's defaults would make it)
DEFAULTS = [
    (["nll", *EVAL], [CommonOptions(checkpoint="c", out="o", batch_size=16), NLLOptions()]),  # 16: the bound's
    (["rate-distortion", *EVAL], [CommonOptions(checkpoint="c", out="o", batch_size=16), RateDistortionOptions()]),
    (["sample", *EVAL], [CommonOptions(checkpoint="c", out="o"), SampleOptions()]),
    (["progressive", *EVAL], [CommonOptions(checkpoint="c", out="o"), ProgressiveOptions()]),
    (["interpolate", *EVAL], [CommonOptions(checkpoint="c", out="o"), InterpolateOptions()]),
    (["analytic-variance", "--checkpoint", "c"], [AnalyticVarianceOptions(checkpoint="c")]),
    (["quickstart"], [QuickstartOptions()]),
    (["compress", "in.png", *EVAL], [CodecOptions()]),
    (["fid", "--samples", "s.npz"], [FidOptions(samples="s.npz")]),
    (["fid", "--samples", "s.npz", "--no-digits"], [FidOptions(samples="s.npz", digits=False)]),
    (["fid", "--samples", "s.npz", "--digits"], [FidOptions(samples="s.npz", digits=True)]),
]


@pytest.mark.parametrize("argv,expected", DEFAULTS, ids=[d[0][0] for d in DEFAULTS])
def test_parser_defaults_are_the_dataclass_defaults(argv, expected):
    args = parse(argv)
    for options in expected:
        assert build(type(options), args) == options


@pytest.mark.parametrize("register", [evaluate.register_nll, evaluate.register_rate_distortion,
                                      evaluate.register_sample, evaluate.register_progressive,
                                      evaluate.register_interpolate, evaluate.register_analytic_variance,
                                      evaluate.register_fid, quickstart_cli.register])
def test_no_default_is_written_in_the_command_line_code(register):
    source = inspect.getsource(register).replace('default="quickstart"', "")  # quickstart's --out: not a field
    assert "default=" not in source


def test_compress_writes_no_codec_default():
    compress = inspect.getsource(compress_cli.register).split('sub.add_parser("decompress"')[0]
    assert compress.count("default=") == 1 and 'default="ema"' in compress  # --weights: no dataclass holds it


def test_every_default_in_help_comes_from_the_dataclass():
    # add_options appends each default to its help; the texts themselves hold none (they would go stale), only
    # "(default: ...)" saying what a None default means
    for helps in (evaluate.COMMON_HELP, evaluate.NLL_HELP, evaluate.SAMPLE_HELP, evaluate.PROGRESSIVE_HELP,
                  evaluate.INTERPOLATE_HELP, evaluate.RATE_DISTORTION_HELP, evaluate.ANALYTIC_VARIANCE_HELP,
                  quickstart_cli.HELP, compress_cli.CODEC_HELP):
        for name, spec in helps.items():
            text = spec.help if isinstance(spec, Flag) else spec
            assert "(default " not in text, name


def _positional_option_calls(path: Path) -> list[str]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
            name = node.func.id
            if name.endswith("Options") or name in ("SamplerSpec", "DataChoice"):
                calls.append(f"{path.name}:{node.lineno} {name}")
    return calls


def test_options_are_built_by_name():
    assert [c for p in sorted(CLI.glob("*.py")) for c in _positional_option_calls(p)] == []


def test_built_by_name_whatever_the_field_order():
    fields = [("steps", int, dataclasses.field(default=3)), ("eta", float, dataclasses.field(default=0.5))]
    built = []
    for order in (fields, fields[::-1]):
        cls = dataclasses.make_dataclass("Toy", order, frozen=True)
        p = Parser()
        add_options(p, cls, {"steps": "steps", "eta": "eta"})
        built.append(dataclasses.asdict(build(cls, p.parse_args(["--steps", "7", "--eta", "0.25"]))))
    assert built[0] == built[1] == {"steps": 7, "eta": 0.25}


def test_one_device_default_for_every_command():
    with_device = {name: next(a for a in p._actions if a.dest == "device").default
                   for name, p in subparsers().items() if any(a.dest == "device" for a in p._actions)}
    assert set(with_device) == {"train", "quickstart", "fid", "nll", "rate-distortion", "sample", "progressive",
                                "interpolate", "analytic-variance"}
    assert set(with_device.values()) == {DEFAULT_DEVICE}
    for cls in (CommonOptions, AnalyticVarianceOptions, QuickstartOptions, FidOptions):
        assert {f.name: f.default for f in dataclasses.fields(cls)}["device"] == DEFAULT_DEVICE
    for fn in (train, Trainer):
        assert inspect.signature(fn).parameters["device"].default == DEFAULT_DEVICE


# --- add_options itself, on a small options dataclass ------------------------------------------------------

@dataclass(frozen=True)
class Inner:
    split: Literal["train", "test"] = "test"
    path: str | None = None


@dataclass(frozen=True)
class Toy:
    checkpoint: str
    mode: Literal["a", "b"] = "a"
    eta: float = 0.0
    at: tuple[int, ...] | None = None
    save: bool = False
    clip_denoised: bool = True
    limit: int | None = None
    data: Inner = Inner("train")
    hidden: int = 5  # no option: not in the help


HELP = {"checkpoint": "the model", "mode": "a or b", "eta": "η", "at": "times", "save": "save it",
        "clip_denoised": Flag("no clipping", names=("--no-clip",)), "limit": "first N", "split": "split",
        "path": Flag("data path", names=("--data",))}


def toy_parser(**defaults: object) -> Parser:
    p = Parser(prog="toy")
    add_options(p, Toy, HELP, defaults)
    return p


def test_each_field_becomes_its_option():
    o = build(Toy, toy_parser().parse_args(["--checkpoint", "c", "--mode", "b", "--eta", "1.5", "--at", "3,2,1",
                                            "--save", "--no-clip", "--limit", "4", "--split", "test",
                                            "--data", "d"]))
    assert o == Toy(checkpoint="c", mode="b", eta=1.5, at=(3, 2, 1), save=True, clip_denoised=False, limit=4,
                    data=Inner("test", "d"))


def test_defaults_come_from_the_fields_and_the_nested_default():
    o = build(Toy, toy_parser().parse_args(["--checkpoint", "c"]))
    assert o == Toy(checkpoint="c") and o.data == Inner("train")  # the outer default, not Inner()'s
    assert build(Toy, toy_parser(limit=2).parse_args(["--checkpoint", "c"])).limit == 2  # a command's own default
    help_text = toy_parser().format_help()
    assert "(default a)" in help_text and "(default 0.0)" in help_text and "(default train)" in help_text
    assert "--hidden" not in help_text


@pytest.mark.parametrize("argv,needle", [
    ([], "the following arguments are required: --checkpoint"),
    (["--checkpoint", "c", "--mode", "z"], "argument --mode: invalid choice: 'z'"),
    (["--checkpoint", "c", "--eta", "nan"], "argument --eta: expected a finite number, got 'nan'"),
    (["--checkpoint", "c", "--at", "1,x"], "argument --at: expected comma-separated integers"),
    (["--checkpoint", "c", "--limit", "x"], "argument --limit: invalid int value: 'x'"),
    (["--checkpoint", "c", "--limit", "1", "--limit", "2"], "option --limit is given twice"),
])
def test_values_of_the_wrong_kind_are_refused_while_parsing(capsys, argv, needle):
    with pytest.raises(SystemExit):
        toy_parser().parse_args(argv)
    assert needle in capsys.readouterr().err


def test_a_field_without_a_command_line_type_or_a_shared_option_is_a_programming_error():
    @dataclass
    class Odd:
        fn: object = None

    with pytest.raises(TypeError, match="no command-line type"):
        add_options(Parser(), Odd, {"fn": "a callable"})
    p = Parser()
    add_options(p, Inner, {"split": "split"})
    with pytest.raises(ValueError, match="share the option"):
        add_options(p, Inner, {"split": "split"})



# --- what a newcomer types wrong: each refusal names the subcommand, the option's new home, the default as typed --

def test_an_unknown_option_of_a_subcommand_is_named_with_that_subcommand(capsys):
    from ddpm.cli import main

    assert main(["quickstart", "--ddim-steps", "5"]) == 2  # quickstart's option of 0.2, now --sampler-steps
    err = capsys.readouterr().err.strip()
    assert err == "ddpm quickstart: error: unrecognized arguments: --ddim-steps 5 (see ddpm quickstart --help)"


@pytest.mark.parametrize("argv,needle", [
    (["--data.image_size", "16"], "unknown option --data.image_size (data.image_size is now model.image_size: "
                                  "--image_size)"),
    (["--data.channels", "3"], "(data.channels is now model.in_channels: --channels)"),
    (["--learn_sigma", "true"], "unknown option --learn_sigma (model.learn_sigma is now diffusion.var_type: "
                                "--var_type learned or learned_range)"),
    (["--model.learn_sigma", "true"], "(model.learn_sigma is now diffusion.var_type: --var_type"),
])
def test_an_override_of_a_moved_field_names_its_new_home(argv, needle):
    from ddpm.cli.overrides import parse_overrides
    from ddpm.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_overrides(argv)
    assert needle in str(e.value)


def test_a_tuple_default_is_shown_as_it_is_typed():
    help_text = " ".join(subparsers()["quickstart"].format_help().split())
    assert "(default 10,20,50)" in help_text and "(10, 20, 50)" not in help_text
