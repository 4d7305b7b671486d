"""Run configuration: overrides by name, each fact in one place, and configs of older versions migrated."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpm.config import (
    PRESETS,
    ConfigError,
    DataConfig,
    MLPConfig,
    RunConfig,
    UNetConfig,
    check_resume_config,
    config_differences,
    migrate,
    network_out_channels,
    override,
    preset,
    to_dict,
)
from ddpm.loading import load_model
from ddpm.nets import network_for

OLD_CHECKPOINT = Path(__file__).parent / "data" / "checkpoint_v0_1"  # written by ddpm 0.1 (commit c273ab2)


# --- overrides by name ---------------------------------------------------------------------------

def test_a_bare_name_finds_its_one_section() -> None:
    cfg = override(preset("digits"), lr=3e-4, T=500, dropout=0.1, random_flip=True, var_type="fixed_beta_tilde")
    assert (cfg.train.lr, cfg.diffusion.T, cfg.model.dropout, cfg.data.random_flip) == (3e-4, 500, 0.1, True)
    assert cfg.diffusion.var_type == "fixed_beta_tilde"
    assert cfg.data.dataset == "digits" and cfg.train.batch_size == preset("digits").train.batch_size
    assert preset("digits").train.lr == 1e-3  # presets are not mutated


def test_a_dotted_name_names_the_section() -> None:
    cfg = override(preset("digits"), **{"train.lr": 3e-4, "model.image_size": 16, "name": "mine"})
    assert (cfg.train.lr, cfg.model.image_size, cfg.name) == (3e-4, 16, "mine")
    with pytest.raises(ConfigError, match="unknown config section 'modle'"):
        override(preset("digits"), **{"modle.image_size": 16})
    with pytest.raises(ConfigError, match="unknown option 'train.dropout'"):
        override(preset("digits"), **{"train.dropout": 0.1})


def test_image_size_and_channels_live_on_the_model_alone() -> None:
    cfg = override(preset("digits"), image_size=16, channels=3)  # `channels` is the U-Net's in_channels
    assert cfg.model.sample_shape == (3, 16, 16)
    assert not {"image_size", "channels"} & {f.name for f in fields(DataConfig)}
    with pytest.raises(ConfigError, match="channels and model.in_channels both set model.in_channels"):
        override(preset("digits"), channels=3, **{"model.in_channels": 3})
    for old, new in (("data.image_size", "model.image_size"), ("data.channels", "model.in_channels")):
        with pytest.raises(ConfigError, match=f"option '{old}' is no longer a field \\({old} is now {new}: --"):
            override(preset("digits"), **{old: 16})
    with pytest.raises(ConfigError, match=r"unknown option 'learn_sigma' \(model.learn_sigma is now diffusion.var_t"
                                          r"ype: --var_type learned or learned_range\)"):
        override(preset("digits"), learn_sigma=True)
    with pytest.raises(ConfigError, match=r"option 'model.learn_sigma' is no longer a field \(model.learn_sigma is "
                                          r"now diffusion.var_type: --var_type learned or learned_range\)"):
        override(preset("digits"), **{"model.learn_sigma": True})


def test_a_name_in_two_sections_must_be_dotted() -> None:
    @dataclass(frozen=True)
    class DataWithLr(DataConfig):  # today no two sections share a field; a future one must not be guessed
        lr: float = 0.5

    cfg = RunConfig(data=DataWithLr())
    with pytest.raises(ConfigError, match=r"option 'lr' is ambiguous: use one of \['data.lr', 'train.lr'\]"):
        override(cfg, lr=1e-3)
    assert override(cfg, **{"train.lr": 1e-3}).train.lr == 1e-3


def test_every_bare_name_of_the_presets_resolves_to_one_section() -> None:
    for cfg in PRESETS.values():
        names = [f.name for sec in (cfg.model, cfg.diffusion, cfg.data, cfg.train) for f in fields(sec)]
        assert len(names) == len(set(names)), cfg.name


def test_a_beta_the_schedule_does_not_read_is_refused() -> None:
    assert override(preset("digits"), schedule="constant", beta_end=0.05).diffusion.beta_end == 0.05
    with pytest.raises(ConfigError, match=r"beta_start is not used by diffusion.schedule='constant', which takes "
                                          r"beta_end"):
        override(preset("digits"), schedule="constant", beta_start=0.05)
    with pytest.raises(ConfigError, match=r"diffusion.beta_end is not used by diffusion.schedule='cosine', which "
                                          r"takes no β parameter"):
        override(preset("digits"), schedule="cosine", **{"diffusion.beta_end": 0.05})
    cosine = override(preset("toy2d"), schedule="cosine")  # the preset's own β values are not "given"
    assert cosine.diffusion.schedule == "cosine"


# --- one fact, one place -------------------------------------------------------------------------

def test_the_likelihood_digits_preset_differs_from_the_quickstart_s_in_beta_1_and_steps_alone() -> None:
    # docs/experiments.md measures the two changes one at a time: nothing else may drift apart
    a, b = to_dict(preset("digits")), to_dict(preset("digits-nll"))
    assert config_differences(a, b) == ["diffusion.beta_start", "name", "train.total_steps"]
    assert preset("digits-nll").diffusion.beta_start ** 0.5 == pytest.approx(0.05)

def test_the_sample_shape_and_output_channels_follow_from_the_configs() -> None:
    digits, toy = preset("digits"), preset("toy2d")
    assert digits.model.sample_shape == (1, 8, 8) and toy.model.sample_shape == (2,)
    assert digits.network_out_channels == 1 and toy.network_out_channels == 2
    learned = override(digits, var_type="learned_range", loss_type="hybrid")
    assert learned.network_out_channels == 2 == network_out_channels(learned.model, learned.diffusion)
    net = network_for(learned)
    out = net(torch.zeros(3, *learned.model.sample_shape), torch.tensor([0, 1, 2]))
    assert out.shape == (3, 2, 8, 8)
    mlp = network_for(override(toy, var_type="learned", loss_type="vlb"))
    assert mlp(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3])).shape == (4, 4)


def test_toy_points_need_a_two_dimensional_model() -> None:
    with pytest.raises(ConfigError, match="toy2d' holds 2-D points.*shape \\(3,\\)"):
        RunConfig(model=MLPConfig(dim=3), data=DataConfig(dataset="toy2d"))
    with pytest.raises(ConfigError, match="toy2d' holds 2-D points.*shape \\(3, 32, 32\\)"):
        RunConfig(model=UNetConfig(), data=DataConfig(dataset="toy2d"))


def test_round_trip_through_json_is_exact() -> None:
    for cfg in PRESETS.values():
        assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --- configs and checkpoints of ddpm 0.1 ---------------------------------------------------------

NO_WARMUP = override(preset("digits"), ema_warmup_power=None)  # what every run of ddpm 0.1 and 0.2 trained


def _old_layout(cfg: RunConfig) -> dict:
    """``cfg`` as ddpm 0.1 stored it: image size and channels on both model and data, learn_sigma on the model,
    and no EMA warm-up (``cfg`` must have none)."""
    assert cfg.train.ema_warmup_power is None
    d = cfg.to_dict()
    del d["train"]["ema_warmup_power"]
    if isinstance(cfg.model, UNetConfig):
        d["data"].update(image_size=cfg.model.image_size, channels=cfg.model.in_channels)
    else:
        d["data"].update(image_size=1, channels=cfg.model.dim)
    d["model"]["learn_sigma"] = cfg.diffusion.learn_sigma
    return d


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_old_config_dicts_migrate(name: str) -> None:
    cfg = override(PRESETS[name], var_type="learned_range", loss_type="hybrid", ema_warmup_power=None)
    assert RunConfig.from_dict(_old_layout(cfg)) == cfg
    assert migrate(cfg.to_dict()) == cfg.to_dict()  # today's layout is left as it is


def test_an_old_config_that_contradicts_itself_is_refused() -> None:
    d = _old_layout(NO_WARMUP)
    d["data"]["image_size"] = 16
    with pytest.raises(ConfigError, match="data.image_size=16 contradicts model.image_size=8"):
        RunConfig.from_dict(d)
    d = _old_layout(NO_WARMUP)
    d["model"]["learn_sigma"] = True  # but var_type fixed_beta
    with pytest.raises(ConfigError, match="model.learn_sigma=True contradicts diffusion.var_type='fixed_beta'"):
        RunConfig.from_dict(d)


def test_resuming_a_run_written_by_the_old_layout_is_not_a_change() -> None:
    cfg = NO_WARMUP
    check_resume_config(cfg, _old_layout(cfg))  # no error: the same run
    with pytest.raises(ConfigError, match=r"model.image_size \(checkpoint: 8\)"):
        check_resume_config(override(cfg, image_size=16), _old_layout(cfg))
    # today's preset warms its EMA up; the old run did not, and resuming it must keep its constant decay
    with pytest.raises(ConfigError, match=r"train.ema_warmup_power \(checkpoint: None\)"):
        check_resume_config(preset("digits"), _old_layout(cfg))


def test_a_checkpoint_written_by_ddpm_0_1_loads_and_computes_the_same(tmp_path: Path) -> None:
    stored = json.loads((OLD_CHECKPOINT / "meta.json").read_text())["config"]
    assert stored["model"]["learn_sigma"] is True and stored["data"]["image_size"] == 4  # the old layout
    ckpt = tmp_path / "old"
    shutil.copytree(OLD_CHECKPOINT, ckpt)
    (ckpt / "expected.safetensors").unlink()  # not part of the checkpoint
    model = load_model(ckpt)
    assert model.config.diffusion.var_type == "learned_range" and model.sample_shape == (1, 4, 4)
    expected = load_file(OLD_CHECKPOINT / "expected.safetensors")  # the 0.1 network's output on fixed inputs
    with torch.no_grad():
        out = model.net(expected["x"], expected["steps"])
    assert out.shape == (2, 2, 4, 4)
    torch.testing.assert_close(out, expected["out"], rtol=0, atol=1e-6)


def test_a_hundred_thousand_levels_are_refused_in_one_short_line_naming_the_field() -> None:
    d = to_dict(preset("digits"))
    d["model"]["channel_mults"] = [1] * 100_000  # 2**99999 has 30,103 digits: too many for str() before
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(d)
    message = str(info.value)
    assert "model.channel_mults has 100000 levels" in message and "2^99999" in message
    assert len(message) < 300
    d["model"]["channel_mults"] = [1, 2, 2]  # a few levels: the divisor is written out, as before
    d["model"]["image_size"] = 10
    with pytest.raises(ConfigError, match=r"model.image_size=10 must be divisible by 4 \(model.channel_mults"):
        RunConfig.from_dict(d)


def test_a_schedule_that_drops_the_presets_beta_says_so(caplog) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="ddpm.config"):
        cfg = override(preset("digits-nll"), schedule="cosine")
    assert cfg.diffusion.schedule == "cosine"
    said = [r.getMessage() for r in caplog.records]
    assert said == ["diffusion.schedule='cosine' does not read beta_start=0.0025, which digits-nll sets; that value "
                    "is left unused"], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddpm.config"):
        override(preset("digits"), schedule="cosine")  # the paper's defaults: nothing of the preset's is dropped
        override(preset("digits-nll"), schedule="quadratic")  # reads beta_start too
    assert not caplog.records
