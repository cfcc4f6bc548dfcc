import dataclasses
import typing

import pytest

from workbench.__main__ import FILLED_BY_RUN, STORE_FLAGS, main, parse_args, train_configs
from workbench.activations import StoreConfig
from workbench.fielddoc import field_help
from workbench.sae import load_sae
from workbench.sae.config import SAEConfig, SAETrainConfig


@pytest.mark.slow
def test_train_sae_command_line_matches_config(tmp_path, default_models):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train-sae",
                "--hook",
                "blocks.0.hook_resid_post",
                "--d-sae",
                "256",
                "--k",
                "8",
                "--selection",
                "mutual_choice",
                "--total-tokens",
                "8192",
                "--batch-size",
                "4096",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    sae = load_sae(out)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k, sae.cfg.selection) == (128, 256, 8, "mutual_choice")
    # a complete run: evaluation, and on a byte model the usefulness metrics the viewer's panel reads
    from workbench.sae.saebench_json import read_run_evals

    assert (out / "results.json").exists() and (out / "features.safetensors").exists()
    evals = read_run_evals(out)
    assert evals is not None and len(evals["sparse_probing"]["tasks"]) >= 8
    assert sae.cfg.hook_name == "blocks.0.hook_resid_post"
    with pytest.raises(KeyError, match="did you mean"):
        main(["train-sae", "--hook", "blocks.0.hook_resid_pots", "--d-sae", "256", "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_cache_acts_then_train_on_the_cache(tmp_path, default_models):
    from workbench.activations import CachedSource

    cache = tmp_path / "cache"
    assert (
        main(
            [
                "cache-acts",
                "--hook",
                "blocks.1.hook_resid_post",
                "--tokens",
                "8192",
                "--shard-tokens",
                "4096",
                "--out",
                str(cache),
            ]
        )
        == 0
    )
    src = CachedSource(cache)
    assert (len(src.shards), src.d, src.n_tokens) == (2, 128, 8192)
    assert src.manifest["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    out = tmp_path / "run"
    assert (
        main(
            [
                "train-sae",
                "--cache",
                str(cache),
                "--d-sae",
                "256",
                "--k",
                "8",
                "--total-tokens",
                "8192",
                "--batch-size",
                "1024",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    sae = load_sae(out)
    assert (sae.cfg.d_in, sae.cfg.hook_name, sae.cfg.model_name) == (128, "blocks.1.hook_resid_post", "workbench-tiny")
    with pytest.raises(SystemExit, match="exactly one of --hook"):
        main(
            [
                "train-sae",
                "--cache",
                str(cache),
                "--hook",
                "blocks.0.hook_resid_post",
                "--d-sae",
                "256",
                "--out",
                str(tmp_path / "x"),
            ]
        )


D_IN = 64
BASE = ["train-sae", "--d-sae", "256", "--out", "run"]  # the one required config field, and the run folder


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _typed(value) -> list[str]:
    """A value as a user types it."""
    if isinstance(value, tuple):
        return [x for v in value for x in _typed(v)]
    return [str(value).lower() if value is None or isinstance(value, bool) else str(value)]


def _other_value(cls, f: dataclasses.Field):
    """A valid value of field `f` other than its default."""
    if f.name == "matryoshka":
        return "expected"  # "fixed", the first other choice, needs widths of its own
    choices = f.metadata.get("choices")
    if choices is not None:
        return next(c for c in choices if not (c == f.default and type(c) is type(f.default)))
    tp = typing.get_type_hints(cls)[f.name]
    if tp == tuple[float, float]:
        return tuple(v / 2 for v in f.default)
    if tp == tuple[int, ...]:
        return (64, 128)
    if tp in (bool | None,):
        return True
    if tp is bool:
        return not f.default
    if tp in (int, int | None):
        return 7 if f.default is None else f.default + 3
    if tp in (float, float | None):
        return 3e-3 if f.default is None else f.default / 4
    if tp in (str, str | None):
        return "cuda:1" if f.name == "device" else "some-project"
    raise AssertionError(f"no test value for {cls.__name__}.{f.name}: {tp}")


NEEDS = {"skip": {"transcoder": True}, "d_out": {"transcoder": True}}
FIELDS = [
    (cls, f)
    for cls in (SAEConfig, SAETrainConfig)
    for f in dataclasses.fields(cls)
    if f.name not in FILLED_BY_RUN and f.name != "d_sae"
]


def test_every_config_field_is_a_flag_with_the_dataclass_default():
    args = parse_args(BASE)
    sae, train = train_configs(args, D_IN)
    assert sae == SAEConfig(d_in=D_IN, d_sae=256) and train == SAETrainConfig()
    flags = {a.dest for a in _parser_actions()}
    assert {f.name for _, f in FIELDS} | {"d_sae"} <= flags
    assert not set(FILLED_BY_RUN) & flags  # the run fills these from its data source


def _parser_actions():
    from workbench.__main__ import _parsers

    return _parsers()[1]["train-sae"]._actions


@pytest.mark.parametrize("cls,f", FIELDS, ids=[f"{c.__name__}.{f.name}" for c, f in FIELDS])
def test_each_flag_round_trips_into_its_config(cls, f):
    value = _other_value(cls, f)
    typed = [] if typing.get_type_hints(cls)[f.name] is bool else _typed(value)  # a bool is a bare flag
    needs = NEEDS.get(f.name, {})  # fields valid only beside another (a skip matrix needs a transcoder)
    argv = BASE + [_flag(f.name), *typed] + [_flag(k) for k in needs]
    sae, train = train_configs(parse_args(argv), D_IN)
    want_sae, want_train = SAEConfig(d_in=D_IN, d_sae=256, **needs), SAETrainConfig()
    if cls is SAEConfig:
        want_sae = dataclasses.replace(want_sae, **{f.name: value})
    else:
        want_train = dataclasses.replace(want_train, **{f.name: value})
    assert (sae, train) == (want_sae, want_train)
    assert type(getattr(sae if cls is SAEConfig else train, f.name)) is type(value)


def test_none_true_false_and_tuples_parse_to_their_types():
    args = parse_args(
        BASE
        + [
            "--lr",
            "none",
            "--k-aux",
            "None",
            "--use-triton",
            "false",
            "--sparse",
            "true",
            "--adam-betas",
            "0.5",
            "0.75",
            "--wandb-project",
            "none",
        ]
    )
    _, train = train_configs(args, D_IN)
    assert (args.lr, args.k_aux, train.use_triton, train.sparse) == (None, None, False, True)
    assert train.adam_betas == (0.5, 0.75) and train.wandb_project is None
    assert train_configs(parse_args(BASE + ["--sparse", "auto", "--use-triton", "none"]), D_IN)[1] == SAETrainConfig()


def test_help_shows_every_fields_documentation_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["train-sae", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    squeezed = "".join(out.split())  # argparse wraps lines (also after hyphens)
    for cls, f in FIELDS:
        assert "".join(field_help(f).split()) in squeezed, f"{cls.__name__}.{f.name}"
    assert '--parallel {data,latent} under torchrun: "data" (DDP, whole SAE per rank)' in out
    assert "a latent that has not fired for this many tokens is dead (default: 1000000)" in out
    assert "--adam-betas FLOAT FLOAT Adam's beta1 and beta2 (default: 0.9 0.999)" in out
    assert "--sparse {true,false,auto}" in out and "--use-triton {true,false,none}" in out


@pytest.mark.parametrize(
    "extra,flag,why",
    [
        (["--dtype", "float16"], "--dtype", "invalid choice: 'float16'"),
        (["--adam-betas", "0.9"], "--adam-betas", "expected 2 arguments"),
        (["--adam-betas", "0.9", "high"], "--adam-betas", "expected float, got 'high'"),
        (["--k", "eight"], "--k", "expected int, got 'eight'"),
        (["--k", "256"], "--k", "smaller than the dictionary"),  # refused by SAEConfig, before any model loads
        (["--selection", "batchtopk"], "--selection", "invalid choice"),
        (["--sparse", "maybe"], "--sparse", "invalid choice: 'maybe'"),
        (["--use-triton", "maybe"], "--use-triton", "expected true, false or none"),
        (["--lr", "fast"], "--lr", "expected float or none"),
        (["--threshold-decay", "1.0"], "--threshold-decay", "must lie in"),
    ],
)
def test_a_bad_value_fails_naming_its_flag(capsys, extra, flag, why):
    with pytest.raises(SystemExit) as e:
        parse_args(BASE + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"workbench train-sae: error: argument {flag}: " in err and why in err


def test_cache_acts_flags_are_the_store_config_fields(capsys):
    args = parse_args(["cache-acts", "--hook", "blocks.1.hook_resid_post", "--tokens", "8192", "--out", "c"])
    defaults = StoreConfig("blocks.1.hook_resid_post")
    assert (args.hook_name, args.buffer_tokens, args.with_grads, args.seed) == (
        defaults.hook_name,
        defaults.buffer_tokens,
        defaults.with_grads,
        defaults.seed,
    )
    args = parse_args(
        [
            "cache-acts",
            "--hook",
            "h",
            "--tokens",
            "1",
            "--out",
            "c",
            "--shard-tokens",
            "4096",
            "--with-grads",
            "--seed",
            "3",
        ]
    )
    assert (args.buffer_tokens, args.with_grads, args.seed) == (4096, True, 3)
    with pytest.raises(SystemExit):
        main(["cache-acts", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(StoreConfig):
        if f.name in STORE_FLAGS:
            assert f"{_flag(STORE_FLAGS[f.name])} " in out and "".join(field_help(f).split()) in "".join(out.split())


def test_add_flags_on_a_toy_config():
    import argparse

    from workbench.fielddoc import REQUIRED, add_flags, doc, from_args

    @dataclasses.dataclass(frozen=True)
    class Toy:
        name: str = doc(REQUIRED, "what it is called")
        sizes: tuple[int, ...] = doc((1, 2), "any number of sizes")
        bos: bool = doc(True, "keep BOS")
        limit: float | None = doc(None, "an upper bound, 50% of something")

    ap = argparse.ArgumentParser()
    assert add_flags(ap, Toy, rename={"bos": "keep_bos"}) == ["name", "sizes", "bos", "limit"]
    toy = from_args(Toy, ap.parse_args(["--name", "t", "--sizes", "3", "4", "5", "--no-keep-bos", "--limit", "2"]))
    assert toy == Toy("t", (3, 4, 5), False, 2.0)
    assert from_args(Toy, ap.parse_args(["--name", "t"])) == Toy("t")
    assert "50% of something (default: none)" in " ".join(ap.format_help().split())

    @dataclasses.dataclass
    class Undocumented:
        x: int = 1

    with pytest.raises(TypeError, match="Undocumented.x has no documentation"):
        add_flags(argparse.ArgumentParser(), Undocumented)


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--tokens", "8192", "--shard-tokens", "0"], "--shard-tokens must be at least 1"),
        (["--tokens", "100"], "less than one shard"),
    ],
)
def test_cache_acts_refuses_sizes_that_write_nothing_sensible(tmp_path, flags, needle):
    args = ["cache-acts", "--hook", "blocks.0.hook_resid_post", "--out", str(tmp_path / "c"), *flags]
    with pytest.raises(SystemExit, match=needle):
        main(args)
    assert not (tmp_path / "c").exists()  # refused before any model loads or file is written
