"""trtalk.configcli: flags generated from config dataclasses, and the configs built back."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from trtalk.configcli import (
    add_command,
    add_config_args,
    config_from_args,
    inconsistent_flags,
    option,
    to_argv,
)
from trtalk.errors import TrtalkError


@dataclass
class Shared:
    device: str = option("cpu", help="cpu or cuda[:N]")
    seed: int = option(0, help="seed of the random weights")


@dataclass(frozen=True)
class Mouth:
    gain: float = option(1.5, help="mouth opening gain")
    smooth: bool = option(True, help="smooth the mouth")


@dataclass
class Everything:
    out: Path = option(short="-o", help="output file")
    name: str = option("anon", help="a name")
    count: int = option(3, help="how many")
    ratio: float = option(0.25, help="a ratio in %")
    where: Path = option(Path("a/b.mp4"), help="a path")
    maybe: int | None = option(None, help="an optional int")
    maybe_path: Path | None = option(None, help="an optional path", default_text="next to --out")
    flag: bool = option(False, help="a switch")
    keep: bool = option(True, help="keep things")
    pace: bool | None = option(None, negative="--fast", help="real time", negative_help="as fast as possible")
    batches: list[int] = option(default_factory=lambda: [1, 8], help="batch sizes")
    names: tuple[str, ...] = option(("x", "y"), help="names")
    kind: Literal["fp16", "fp32"] = option("fp16", help="precision")
    backend: str = option("torch", choices=("torch", "onnxruntime"), help="runtime")
    backends: list[str] = option(default_factory=lambda: ["torch"], choices=("torch", "onnxruntime"),
                                 help="runtimes")
    level: int = option(1, flags="--lvl", metavar="N", help="renamed flag")
    secret: int = option(7, hidden=True, help="not in --help")
    mic: str | None = option(None, const="", exclusive="audio", metavar="DEV", help="microphone")
    audio: Path | None = option(None, exclusive="audio", help="audio file")
    stats: float | None = option(None, const=5.0, section="reporting", help="stats every S seconds")
    internal: object = option(None, cli=False)
    plain: int = 4  # no option(): still a flag
    mouth: Mouth = option(default_factory=lambda: Mouth(gain=2.0))
    shared: Shared = option(default_factory=Shared, prefix="")

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("--count must be >= 0,\n got a negative number")


def _parser(cls: type = Everything, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=True)
    add_config_args(p, cls, **kw)
    return p


def _parse(argv: list[str], cls: type = Everything):
    return config_from_args(cls, _parser(cls).parse_args(argv))


def test_defaults_come_from_the_fields() -> None:
    cfg = _parse(["-o", "x.mp4"])
    assert cfg == Everything(out=Path("x.mp4"))
    assert cfg.batches == [1, 8] and cfg.names == ("x", "y") and cfg.mouth == Mouth(gain=2.0, smooth=True)
    assert cfg.pace is None and cfg.keep is True and cfg.flag is False and cfg.internal is None


def test_every_type_parses() -> None:
    cfg = _parse(["--out", "o.mp4", "--name", "bob", "--count", "5", "--ratio", "0.5", "--where", "c/d",
                  "--maybe", "9", "--maybe-path", "p", "--flag", "--no-keep", "--fast", "--batches", "2, 4,",
                  "--names", "a,b,c", "--kind", "fp32", "--backend", "onnxruntime",
                  "--backends", "onnxruntime,torch", "--lvl", "6", "--secret", "8", "--mic", "--stats",
                  "--plain", "5", "--mouth-gain", "3", "--no-mouth-smooth", "--device", "cuda:1",
                  "--seed", "42"])
    assert cfg == Everything(out=Path("o.mp4"), name="bob", count=5, ratio=0.5, where=Path("c/d"), maybe=9,
                             maybe_path=Path("p"), flag=True, keep=False, pace=False, batches=[2, 4],
                             names=("a", "b", "c"), kind="fp32", backend="onnxruntime",
                             backends=["onnxruntime", "torch"], level=6, secret=8, mic="", stats=5.0,
                             plain=5, mouth=Mouth(gain=3.0, smooth=False), shared=Shared("cuda:1", 42))
    assert isinstance(cfg.count, int) and isinstance(cfg.ratio, float) and isinstance(cfg.names, tuple)


def test_const_flags_take_an_optional_value() -> None:
    cfg = _parse(["-o", "x", "--mic", "2", "--stats", "0.5", "--pace"])
    assert (cfg.mic, cfg.stats, cfg.pace) == ("2", 0.5, True)


@pytest.mark.parametrize("cfg", [
    Everything(out=Path("x.mp4")),
    Everything(out=Path("y"), name="z", count=0, ratio=1e-3, maybe=-1, flag=True, keep=False, pace=True,
               batches=[64], names=(), kind="fp32", backends=["onnxruntime", "torch"], level=2, secret=0,
               audio=Path("a.wav"), stats=5.0, plain=0, mouth=Mouth(0.5, False), shared=Shared("cuda", 3)),
    Everything(out=Path("y"), pace=False, mic="hw:1", stats=2.5, mouth=Mouth(2.0, True)),
])
def test_round_trip_through_argv(cfg: Everything) -> None:
    argv = to_argv(cfg)
    assert _parse(argv) == cfg


def test_to_argv_spells_only_what_differs() -> None:
    assert to_argv(Everything(out=Path("o"), keep=False, pace=False, mouth=Mouth(gain=1.5))) == \
        ["--out", "o", "--no-keep", "--fast", "--mouth-gain", "1.5"]


@pytest.mark.parametrize("argv, message", [
    (["--kind", "bf16"], "argument --kind: invalid choice: 'bf16'"),
    (["--backend", "tensorrt"], "argument --backend: invalid choice: 'tensorrt'"),
    (["--backends", "torch,coreml"], "argument --backends: invalid choice: 'coreml'"),
    (["--batches", "1,x"], "argument --batches: expected a comma-separated list of int, got '1,x'"),
    (["--count", "two"], "argument --count: invalid int value: 'two'"),
    (["--mic", "--audio", "a.wav"], "argument --audio: not allowed with argument --mic"),
    (["--keep", "--no-keep"], "argument --no-keep: not allowed with argument --keep"),
])
def test_bad_values_are_argparse_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(["-o", "x", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_field_without_default_is_required(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse([])
    assert exc.value.code == 2
    assert "the following arguments are required: -o/--out" in capsys.readouterr().err


def test_required_exclusive_group(capsys: pytest.CaptureFixture) -> None:
    p = _parser(required_exclusive=("audio",))
    with pytest.raises(SystemExit):
        p.parse_args(["-o", "x"])
    assert "one of the arguments --mic --audio is required" in capsys.readouterr().err
    assert config_from_args(Everything, p.parse_args(["-o", "x", "--audio", "s.wav"])).audio == Path("s.wav")
    with pytest.raises(TypeError, match="no exclusive group"):
        _parser(required_exclusive=("video",))


def test_validation_error_is_a_one_line_trtalk_error() -> None:
    with pytest.raises(TrtalkError) as exc:
        _parse(["-o", "x", "--count", "-1"])
    assert str(exc.value) == "--count must be >= 0, got a negative number"


def test_help_shows_help_and_default() -> None:
    text = " ".join(_parser().format_help().split())  # unwrap argparse's line breaks
    for piece in ["-o OUT, --out OUT output file", "--count COUNT how many (default: 3)",
                  "--ratio RATIO a ratio in % (default: 0.25)", "a path (default: a/b.mp4)",
                  "an optional int --maybe-path", "an optional path (default: next to --out)",
                  "--flag a switch --keep keep things (default: on) --no-keep turn off --keep",
                  "--pace real time --fast as fast as possible",
                  "--batches BATCHES[,...] batch sizes (default: 1,8)",
                  "--kind {fp16,fp32} precision (default: fp16)",
                  "--backends {torch,onnxruntime}[,...] runtimes (default: torch)",
                  "--lvl N renamed flag (default: 1)", "--mic [DEV] microphone",
                  "--plain PLAIN default: 4", "--mouth-gain MOUTH_GAIN mouth opening gain (default: 2.0)",
                  "--device DEVICE cpu or cuda[:N] (default: cpu)",
                  "reporting: --stats [STATS] stats every S seconds"]:
        assert piece in text, piece
    assert "--secret" not in text and "--internal" not in text and "--shared" not in text


@dataclass
class Base:
    fps: float = option(25.0, help="frame rate")


@dataclass
class Grown:
    fps: float = option(25.0, help="frame rate")
    width: int = option(256, help="frame width")


def test_a_new_field_is_a_new_flag() -> None:
    assert [a.dest for a in _parser(Base)._actions] == ["help", "fps"]
    assert [a.dest for a in _parser(Grown)._actions] == ["help", "fps", "width"]
    assert _parse(["--width", "512"], Grown) == Grown(width=512)
    assert "--width WIDTH frame width (default: 256)" in " ".join(_parser(Grown).format_help().split())


@dataclass
class Convert:
    checkpoint: str = option(positional=True, help="folder")
    output: str = option(short="-o", help="output file")
    extra: str = option("e", positional=True, help="optional positional")


def test_positional_arguments() -> None:
    p = _parser(Convert)
    assert config_from_args(Convert, p.parse_args(["ck", "-o", "x"])) == Convert("ck", "x")
    assert config_from_args(Convert, p.parse_args(["ck", "z", "-o", "x"])) == Convert("ck", "x", "z")
    assert to_argv(Convert("ck", "x", "z")) == ["--output", "x", "ck", "z"]


def test_prefix_and_overrides() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p, Base)
    add_config_args(p, Grown, prefix="out-")
    args = p.parse_args(["--fps", "30", "--out-fps", "50", "--out-width", "8"])
    assert config_from_args(Base, args) == Base(30.0)
    assert config_from_args(Grown, args, prefix="out-") == Grown(50.0, 8)
    assert config_from_args(Grown, args, prefix="out-", width=1) == Grown(50.0, 1)
    with pytest.raises(TypeError, match="no field nope"):
        config_from_args(Base, args, nope=1)
    with pytest.raises(TypeError, match="namespace has no 'width'"):
        config_from_args(Grown, args)


@dataclass
class Clash:
    a: Base = option(default_factory=Base, prefix="")
    b: Base = option(default_factory=Base, prefix="")


@dataclass
class NotAFlag:
    table: dict[str, int] = dataclasses.field(default_factory=dict)


def test_developer_errors_fail_when_the_parser_is_built() -> None:
    with pytest.raises(TypeError, match="both map to args.fps"):
        _parser(Clash)
    with pytest.raises(TypeError, match=r"NotAFlag.table: cannot make a flag .*cli=False"):
        _parser(NotAFlag)


def test_add_command_runs_with_the_config(capsys: pytest.CaptureFixture) -> None:
    seen = []
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_command(sub, "grow", Grown, lambda cfg: seen.append(cfg) or 3, help="h")
    add_command(sub, "none", None, lambda: 0, help="no options")
    args = p.parse_args(["grow", "--width", "9"])
    assert args.func(args) == 3 and seen == [Grown(width=9)]
    args = p.parse_args(["none"])
    assert args.func(args) == 0


@dataclass
class OtherFps:
    fps: int = option(30, help="frame rate")


@dataclass
class OtherHelp:
    fps: float = option(30.0, help="frames per second")


def test_inconsistent_flags_names_a_flag_that_changes_meaning() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_command(sub, "a", Base, lambda cfg: 0, help="a")
    add_command(sub, "b", Grown, lambda cfg: 0, help="b")
    add_command(sub, "h", OtherHelp, lambda cfg: 0, help="h")
    assert inconsistent_flags(p) == []  # another default is fine
    assert len(inconsistent_flags(p, compare_help=True)) == 1
    add_command(sub, "c", OtherFps, lambda cfg: 0, help="c")
    assert inconsistent_flags(p) == ["--fps: a ('fps', 'StoreAction', 'float', None) vs c "
                                     "('fps', 'StoreAction', 'int', None)"]


def test_list_defaults_are_not_shared_between_parses() -> None:
    p = _parser()
    first = config_from_args(Everything, p.parse_args(["-o", "x"]))
    first.batches.append(99)
    assert config_from_args(Everything, p.parse_args(["-o", "x"])).batches == [1, 8]


def test_converted_subcommands_keep_their_flags(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    import trtalk.cli
    from trtalk.export.exporter import ExportOptions
    from trtalk.models.cli import ConvertOptions
    from trtalk.runtime.render_cli import DemoConfig

    monkeypatch.setattr(trtalk.cli, "SUBCOMMAND_MODULES",
                        ("trtalk.models.cli", "trtalk.runtime.render_cli", "trtalk.export.cli",
                         "trtalk.runtime.devices"))
    p = trtalk.cli.build_parser()

    def cfg(argv: list[str]):
        args = p.parse_args(argv)
        return config_from_args(args.func.cls, args)

    assert cfg(["export", "--out", "o"]) == ExportOptions(out=Path("o"))
    assert cfg(["export", "--out", "o", "--checkpoint", "c", "--precision", "fp32", "--max-batch", "4",
                "--target", "tensorrt", "--modconv", "plugin", "--compute-capability", "sm89",
                "--seed", "3"]) == \
        ExportOptions(out=Path("o"), checkpoint=Path("c"), precision="fp32", max_batch=4, target="tensorrt",
                      modconv="plugin", compute_capability="sm89", seed=3)
    assert cfg(["convert", "ck", "-o", "x.safetensors"]) == ConvertOptions(Path("ck"), Path("x.safetensors"))
    assert cfg(["demo"]) == DemoConfig()
    got = cfg(["demo", "-o", "d.mp4", "--audio", "a.wav", "--pose", "p.mp4", "--face", "f.png",
               "--paste-back", "--fps", "30", "--backend", "onnxruntime"])
    assert (got.output, got.audio, got.pose, got.face, got.paste_back, got.fps, got.model.backend) == \
        (Path("d.mp4"), Path("a.wav"), Path("p.mp4"), Path("f.png"), True, 30.0, "onnxruntime")
    assert p.parse_args(["devices"]).func.cls is None
    assert trtalk.cli.main(["demo", "--fps", "0"]) == 2
    assert capsys.readouterr().err.strip() == "trtalk: error: --fps 0 is out of range: it must be between 0.1 and 240"
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["export", "--out", "o", "--target", "coreml"])
    assert exc.value.code == 2
