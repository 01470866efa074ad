"""Every config composes and validates; bad values fail early with the offending key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from smet.config import validate
from smet.errors import SmetConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="train", overrides=list(overrides))


def test_defaults_compose_to_the_cpu_quick_start():
    cfg = compose_cfg()
    assert cfg.model.name == "tiny" and cfg.data.source == "embedded" and cfg.sparsity.method == "dense"
    assert cfg.trainer.accelerator == "cpu" and cfg.logger.wandb is None
    validate(cfg)
    # public config contract (DEVELOPERS.md)
    for key in ("sparsity.density", "optimizer.lr", "optimizer.regrowth_warmup_steps", "optimizer.lr_scaling",
                "trainer.max_steps", "trainer.devices", "ckpt_path", "seed"):
        OmegaConf.select(cfg, key, throw_on_missing=True)


@pytest.mark.parametrize("model", options("model"))
def test_every_model_preset(model):
    cfg = compose_cfg(f"model={model}")
    validate(cfg)  # raises SmetConfigError on any bad value
    assert cfg.model.name == model and cfg.model.hidden_size % cfg.model.num_heads == 0


@pytest.mark.parametrize("model", options("model"))
def test_every_model_preset_carries_every_model_key(model):
    """conf/model is the single source of the model's defaults: every LlamaConfig field is in each preset
    (null allowed: vocab_size / max_seq_len / activation_checkpointing), none left to Python."""
    from dataclasses import fields

    from smet.models.llama import LlamaConfig

    cfg = compose_cfg(f"model={model}").model
    missing = [f.name for f in fields(LlamaConfig) if f.name not in cfg]
    assert not missing, f"conf/model/{model}.yaml lacks {missing}"
    assert cfg.activation_checkpointing in (None, "none", "block", "mlp", "attention") and cfg.checkpoint_every >= 1


def test_gradient_checkpointing_contradicting_activation_checkpointing_is_refused():
    for overrides in (["model=7b", "model.activation_checkpointing=mlp"],
                      ["model.gradient_checkpointing=true", "model.activation_checkpointing=none"]):
        with pytest.raises(SmetConfigError) as err:
            validate(compose_cfg(*overrides))
        assert err.value.key == "model.activation_checkpointing" and "gradient_checkpointing=true" in str(err.value)
    for overrides in (["model=7b"], ["model.gradient_checkpointing=true", "model.activation_checkpointing=block",
                                     "model.checkpoint_every=2"], ["model=7b", "model.gradient_checkpointing=false",
                                                                   "model.activation_checkpointing=attention"]):
        validate(compose_cfg(*overrides))


@pytest.mark.parametrize("sparsity", [s for s in options("sparsity") if s != "base"])
def test_every_sparsity_preset(sparsity):
    cfg = compose_cfg(f"sparsity={sparsity}")
    validate(cfg)
    assert cfg.sparsity.method == sparsity.split("_")[0]
    for key in ("sparsity.block_size", "sparsity.materialize", "sparsity.update_interval"):
        if sparsity != "dense":
            OmegaConf.select(cfg, key, throw_on_missing=True)


def test_sparsity_presets_set_their_optimizer_semantics():
    smet = compose_cfg("sparsity=smet").optimizer
    assert smet.reset_local_step and smet.regrowth_warmup_steps == 100 and smet.lr_scaling == "inverse"
    assert smet.lr_scaling_scope == "all"  # the authors' recipe: 1/d on every parameter
    blocks = compose_cfg("sparsity=smet_blocks_only_lr")
    assert blocks.optimizer.lr_scaling_scope == "sparse" and blocks.optimizer.lr_scaling == "inverse"
    assert blocks.sparsity.variant == "blocks_only_lr" and blocks.optimizer.regrowth_warmup_steps == 100
    for ablation in ("smet_no_reset", "smet_no_warmup", "smet_momentum_warmup"):
        o = compose_cfg(f"sparsity={ablation}").optimizer
        assert o.lr_scaling == "inverse" and o.lr_scaling_scope == "all", ablation
    assert compose_cfg("sparsity=smet_no_lr_scaling").optimizer.lr_scaling == "none"
    for naive in ("set", "rigl"):
        o = compose_cfg(f"sparsity={naive}").optimizer
        assert not o.reset_local_step and o.regrowth_warmup_steps == 0 and o.lr_scaling == "none"
    assert compose_cfg("sparsity=rigl").sparsity.growth == "gradient"
    assert compose_cfg("sparsity=static").sparsity.growth == "none"
    assert compose_cfg("sparsity=smet_no_reset").optimizer.reset_local_step is False
    assert compose_cfg("sparsity=smet_momentum_warmup").optimizer.warmup_shape == "momentum"
    # the command line wins over the preset
    assert compose_cfg("sparsity=smet", "optimizer.regrowth_warmup_steps=10").optimizer.regrowth_warmup_steps == 10


@pytest.mark.parametrize("data", options("data"))
def test_every_data_preset(data, tmp_path):
    extra = [f"data.path={tmp_path}"] if data == "local_files" else []
    cfg = compose_cfg(f"data={data}", *extra)
    validate(cfg)
    assert cfg.data.name == data


@pytest.mark.parametrize("combo", [("trainer=gpu",), ("logger=wandb",), ("sparsity/density_schedule=gradual",
                                   "sparsity=smet"), ("trainer=ddp",), ("trainer=ddp_cpu",), ("trainer=deepspeed",)])
def test_other_groups(combo):
    cfg = compose_cfg(*combo)
    validate(cfg)
    default = compose_cfg()
    for override in combo:
        group, option = override.split("=")
        # the option's own files (its defaults chain merged by hand), not Hydra, say what must be there
        global_pkg, want = option_tree(group, option)
        node = cfg if global_pkg else OmegaConf.select(cfg, group.replace("/", "."))
        got = flat(OmegaConf.to_container(node, resolve=False))
        for key, value in flat(OmegaConf.to_container(want, resolve=False)).items():
            assert key in got and got[key] == value, (override, key, got.get(key), value)
        key = "sparsity" if global_pkg else group.replace("/", ".")
        assert OmegaConf.select(cfg, key) != OmegaConf.select(default, key), override  # it did change the default
        if group == "logger":
            assert cfg.logger.wandb.mode in ("offline", "online", "disabled")


def option_tree(group: str, option: str):
    """(``# @package _global_``?, the option file merged over its defaults list, _self_ last unless placed)."""
    path = CONF / group / f"{option}.yaml"
    raw = OmegaConf.load(path)
    defaults = list(raw.pop("defaults", []))
    parts = [raw if d == "_self_" else option_tree(group, d)[1] for d in defaults]
    if "_self_" not in defaults:
        parts.append(raw)
    return path.read_text().startswith("# @package _global_"), OmegaConf.merge(*parts)


def flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_cfg(f"+experiment={experiment}")
    validate(cfg)
    assert cfg.experiment_name == experiment
    grid = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    assert len(grid) >= 1 and "seed" in grid


@pytest.mark.parametrize("override,key", [
    ("sparsity.density=1.5", "sparsity.density"),
    ("sparsity.density=0", "sparsity.density"),
    ("sparsity.block_size=5", "sparsity.block_size"),
    ("sparsity.update_interval=0", "sparsity.update_interval"),
    ("sparsity.drop_fraction=1.0", "sparsity.drop_fraction"),
    ("sparsity.growth=magic", "sparsity.growth"),
    ("sparsity.materialize=lazy", "sparsity.materialize"),
    ("optimizer.regrowth_warmup_steps=-1", "optimizer.regrowth_warmup_steps"),
    ("optimizer.lr_scaling=cube", "optimizer.lr_scaling"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("trainer.devices=0", "trainer.devices"),
    ("data.seq_len=0", "data.seq_len"),
    ("model.num_heads=5", "model.num_heads"),
    ("model.activation_checkpointing=full", "model.activation_checkpointing"),
    ("model.checkpoint_every=0", "model.checkpoint_every"),
    ("model.loss_impl=fused", "model.loss_impl"),
    ("ckpt_path=/nonexistent/x.ckpt", "ckpt_path"),
    ("sparsity.method=magic", "sparsity.method"),
    ("sparsity.drop_fraction=-0.1", "sparsity.drop_fraction"),
    ("data.global_batch_size=30", "data.global_batch_size"),
])
def test_bad_values_name_their_key(override, key):
    base = ["sparsity=smet"]
    with pytest.raises(SmetConfigError) as err:
        validate(compose_cfg(*base, override))
    assert err.value.key == key
    assert str(err.value).startswith(key)


def test_gradual_schedule_initial_density_out_of_range():
    with pytest.raises(SmetConfigError) as err:
        validate(compose_cfg("sparsity=smet", "sparsity/density_schedule=gradual",
                             "sparsity.density_schedule.initial=1.5"))
    assert err.value.key == "sparsity.density_schedule.initial"
