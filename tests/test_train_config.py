"""TrainConfig in groups: every field documented in one group, read grouped; flat names only through from_flat /
to_flat; the seeds' other names resolved once, where parameters are read."""
import dataclasses
import inspect

import pytest

from minigpt.config import TRAIN_GROUPS, TrainConfig
from minigpt.params import ALIASES, ParameterError, Params, load_params, registry, validate_dataclass


def test_groups_partition_the_fields_and_each_field_says_what_it_does():
    seen = set()
    for name, cls in TRAIN_GROUPS.items():
        src = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            assert f.name not in seen, f.name
            seen.add(f.name)
            line = next(l for l in src.splitlines() if l.strip().startswith(f"{f.name}:"))
            assert "  # " in line, f"{name}.{f.name} has no comment"
    assert len(seen) == len(TrainConfig.FIELD_GROUPS) >= 55
    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(TRAIN_GROUPS)


def test_from_flat_puts_each_field_in_its_group_and_to_flat_reverses_it():
    cfg = TrainConfig.from_flat(learning_rate=2e-3, warmup_steps=7, save_interval=30, max_cpu=70.0)
    assert (cfg.optim.learning_rate, cfg.schedule.warmup_steps, cfg.checkpoints.save_interval) == (2e-3, 7, 30)
    assert cfg.guard.max_cpu == 70.0 and cfg.optim.batch_size == 16  # the rest keep their defaults
    assert TrainConfig.from_flat(**cfg.to_flat()) == cfg
    assert not hasattr(cfg, "learning_rate") and not hasattr(cfg, "save_steps")  # one way to read a field
    changed = dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, max_steps=9))
    assert changed.schedule.max_steps == 9 and cfg.schedule.max_steps == 200
    with pytest.raises(TypeError, match="unknown field 'save_stepz'"):
        TrainConfig.from_flat(save_stepz=5)


def test_from_flat_holds_no_copy_of_the_aliases():
    """Other names are resolved by Params (load_params); TrainConfig itself knows only current names."""
    with pytest.raises(TypeError, match="unknown field 'save_steps'"):
        TrainConfig.from_flat(save_steps=5)


@pytest.mark.parametrize("old,new,value", [("save_steps", "save_interval", 25), ("dynamic_seq_length", "context_growth", True),
                                           ("min_seq_length", "context_growth_from", 8), ("max_seq_length", "context_growth_to", 32),
                                           ("disable_optimizations", "disable_speedups", True), ("max_grad_norm", "grad_clip", 0.5)])
def test_seed_names_are_resolved_where_parameters_are_read(old, new, value):
    assert ALIASES[old][0] == new
    P = load_params("pretrain", config="ci", **{old: value})
    assert P[new] == value and getattr(P, old) == value and P.get(old) == value and old not in registry("pretrain")
    assert P.build(TrainConfig).to_flat()[new] == value


def test_an_alias_and_its_current_name_must_agree():
    assert load_params("pretrain", config="ci", save_steps=5, save_interval=5).save_interval == 5
    with pytest.raises(ParameterError, match="save_steps: alias of save_interval, but both are set"):
        load_params("pretrain", config="ci", save_steps=5, save_interval=6)


def test_params_store_earlier_names_under_the_current_key():
    P = Params(save_steps=3, learning_rate=1e-3)
    P["disable_optimizations"] = True
    assert dict(P) == {"save_interval": 3, "learning_rate": 1e-3, "disable_speedups": True}
    P.update(save_steps=4)
    assert P.save_interval == 4 and P["save_steps"] == 4


def test_validation_names_the_key_and_its_aliases():
    """TrainConfig checks itself once, when made; read through the parameters, the error also names the aliases."""
    with pytest.raises(ValueError, match=r"^save_interval: expected a positive integer"):
        TrainConfig.from_flat(save_interval=0)
    with pytest.raises(ParameterError, match=r"^save_interval \(checkpoint_interval, save_steps\): expected a positive integer"):
        load_params("pretrain", config="ci", save_steps=0).build(TrainConfig)
    with pytest.raises(ParameterError, match=r"^context_growth_from \(min_seq_length\): expected at most context_growth_to=32"):
        load_params("pretrain", config="ci", context_growth=True, context_growth_from=64, context_growth_to=32).build(TrainConfig)
    cfg = TrainConfig()
    cfg.optim.batch_size = 0  # changed in place: validate() checks again
    with pytest.raises(ParameterError, match=r"^batch_size: expected a positive integer, got 0"):
        validate_dataclass(cfg)
